"""The one ASGI app: both protocols, classify, explain, the page and metrics.

    from keras_xception.serve.app import build_app
    from keras_xception.serve.service import Service, Settings, open_model

    app = build_app(Service(open_model("imagenet")), Settings(name="xception"))
    # uvicorn.run(app, ...) — or `keras-xception serve`, or Ray Serve's ingress

Routes (NAME is `Settings.name`; reference: docs/serve.md):

    GET  /                               the page (keras_xception/serve/page/)
    GET  /page/FILE                      its other files
    GET  /metrics                        Prometheus text format
    POST /v1/models/NAME:predict         TensorFlow Serving (`tfserving`)
    GET  /v1/models/NAME[/metadata]
    POST /v1/models/NAME:classify?top=K  image body or multipart field `image`
    POST /v1/models/NAME:explain?class=C Grad-CAM overlay, image/png
    GET  /v2, /v2/health/live, /v2/health/ready
    GET  /v2/models/NAME[/ready]         Open Inference Protocol (`oip`)
    POST /v2/models/NAME/infer

What every request goes through first (`_Guard`, a middleware): the
API key (every route but health and the page's static files), the body
limit (413, the body read and thrown away up to `DRAIN_CAP` so the client
sees the answer rather than a reset), the security headers (a strict
Content-Security-Policy) and the metrics. Every error is
`{"error": "<one line>"}`; an unexpected one is a 500 with a generic line,
its traceback on the server's log (stderr), never in the response.

The `/v1/models/...` and `/v2/models/...` paths are split by this module
itself, not by the router: Starlette's `{name}` would match
`xception:predict` whole, and a `GET .../xception:predict` must be a 405.

Batching: `build_app` makes a `batcher.Batcher` over `service.predict`
unless given another object with the same methods (`reserve`, `submit`,
`run_exclusive`, `start`, `stop`, `depth`), as Ray Serve's deployment gives
one built on `@serve.batch`.

(No `from __future__ import annotations` here: FastAPI reads the routes'
annotations, and `Request` is imported inside `build_app`.)
"""

import asyncio
import concurrent.futures
import contextlib
import functools
import hmac
import logging
import os
import pathlib
import re
import time
import urllib.parse

from keras_xception.checks import one_line
from keras_xception.errors import XceptionError
from keras_xception.serve import oip, tfserving
from keras_xception.serve.batcher import Batcher, QueueFull, Stopped
from keras_xception.serve.service import RequestError

log = logging.getLogger("keras_xception.serve")

PAGE_DIR = pathlib.Path(__file__).resolve().parent / "page"

# A body over the limit is read and thrown away up to this many bytes before
# the 413 goes out (clients that are still sending would otherwise see the
# connection reset); past it, the connection is closed.
DRAIN_CAP = 64 << 20

# Routes any client may call without the API key: health, and the page's
# static files (they hold no model output; the page sends the key itself).
HEALTH = ("/v2/health/live", "/v2/health/ready")

CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "connect-src 'self'; font-src 'self'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)
SECURITY_HEADERS = (
    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
)

INTERNAL_ERROR = "internal server error; the server's log has the details"

# The status /metrics counts for a client that left before sending its whole
# body (nginx's "client closed request"); nothing is sent.
CLIENT_CLOSED = 499

_V1 = re.compile(r"(?P<name>[^/:]+)(?:/versions/(?P<version>[^/:]+))?"
                 r"(?:(?P<metadata>/metadata)|:(?P<verb>[^/:]+))?")
_V2 = re.compile(r"(?P<name>[^/]+)(?:/versions/(?P<version>[^/]+))?"
                 r"(?:/(?P<verb>ready|infer))?")
_V1_VERBS = ("predict", "classify", "explain")

_JSON_TYPES = ("application/json", "application/x-www-form-urlencoded")
_RAW_TYPES = ("application/octet-stream", "application/x-www-form-urlencoded")
_ALL_METHODS = ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"]


def route_label(path: str) -> str:
    """The metrics label of a request path: a fixed set, never the path itself."""
    if path == "/" or path.startswith("/page/"):
        return "page"
    if path == "/metrics":
        return "metrics"
    if path.startswith("/v2/health/"):
        return "health"
    if path == "/v2":
        return "server_metadata"
    if path.startswith("/v2/models/"):
        return "infer" if path.endswith("/infer") else "model_metadata"
    if path.startswith("/v1/models/"):
        tail = path.rsplit("/", 1)[-1]
        verb = tail.rsplit(":", 1)[-1] if ":" in tail else None
        return verb if verb in _V1_VERBS else "model_status"
    return "other"


class _Metrics:
    """The server's Prometheus metrics, in a registry of their own."""

    def __init__(self, depth):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter("keras_xception_requests", "HTTP requests by route and status",
                                ("route", "status"), registry=self.registry)
        self.latency = Histogram(
            "keras_xception_request_duration_seconds", "Time to answer, by route",
            ("route",), registry=self.registry,
            buckets=(.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30))
        self.batches = Histogram("keras_xception_batch_size", "Images per model call",
                                 registry=self.registry,
                                 buckets=(1, 2, 4, 8, 16, 32))
        self.images = Counter("keras_xception_images", "Images through the model",
                              registry=self.registry)
        self.queue = Gauge("keras_xception_queue_images",
                           "Images waiting for the model", registry=self.registry)
        self.queue.set_function(depth)

    def on_batch(self, size):
        self.batches.observe(size)
        self.images.inc(size)

    def render(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST


def _json_bytes(status, message, headers=()):
    import json

    body = json.dumps({"error": one_line(message, 500)}).encode()
    return status, [(b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    *headers], body


class _BodyTooLarge(RequestError):
    pass


class _BodyTimeout(RequestError):
    pass


class _Guard:
    """The ASGI middleware every HTTP request goes through; see the module doc."""

    def __init__(self, app, settings, metrics):
        self.app = app
        self.limit = settings.max_body_bytes
        self.body_timeout = settings.body_timeout_s
        self.key = settings.api_key.encode() if settings.api_key else None
        self.metrics = metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        route = route_label(scope["path"])
        status = [500]
        response_started = [False]

        async def send_guarded(message):
            if message["type"] == "http.response.start":
                response_started[0] = True
                status[0] = message["status"]
                message = dict(message)
                message["headers"] = list(message.get("headers", [])) + list(SECURITY_HEADERS)
            await send(message)

        async def answer(code, text, headers=()):
            code, head, body = _json_bytes(code, text, headers)
            await send_guarded({"type": "http.response.start", "status": code,
                                "headers": head})
            await send_guarded({"type": "http.response.body", "body": body})

        try:
            headers = dict(scope["headers"])
            if not self._authorized(scope, headers):
                await answer(401, "this server needs an API key: send the header "
                             "'Authorization: Bearer KEY'",
                             [(b"www-authenticate", b'Bearer realm="keras-xception"')])
                return
            length = headers.get(b"content-length")
            if length is not None:
                try:
                    length = int(length)
                except ValueError:
                    await answer(400, "the Content-Length header is not a number")
                    return
                if length > self.limit:
                    if headers.get(b"expect", b"").lower() != b"100-continue":
                        await self._drain(receive)  # Nothing was sent yet.
                    await answer(413, self._too_large(length))
                    return
            await self.app(scope, self._limited(receive), send_guarded)
        except asyncio.CancelledError:
            # The server stopping, past its grace period (uvicorn logs that in
            # one line): an answer, not a traceback from uvicorn.
            if not response_started[0]:
                await answer(503, "the server stopped before this request finished")
        except Exception as err:  # A bug: the traceback goes to the log only.
            from starlette.requests import ClientDisconnect

            if isinstance(err, ClientDisconnect):  # Gone mid-body: nobody to answer.
                status[0] = CLIENT_CLOSED
                log.info("%s %s: the client closed the connection before sending the "
                         "whole body", scope.get("method"), scope.get("path"))
                return
            log.error("unexpected error answering %s %s", scope.get("method"),
                      scope.get("path"), exc_info=err)
            if not response_started[0]:
                await answer(500, INTERNAL_ERROR)
        finally:
            if self.metrics is not None:
                self.metrics.requests.labels(route, str(status[0])).inc()
                self.metrics.latency.labels(route).observe(time.perf_counter() - started)

    def _authorized(self, scope, headers) -> bool:
        if self.key is None:
            return True
        path = scope["path"]
        if path in HEALTH or (scope["method"] in ("GET", "HEAD")
                              and (path == "/" or path.startswith("/page/"))):
            return True
        given = headers.get(b"authorization", b"")
        scheme, _, token = given.partition(b" ")
        # compare_digest takes as long whatever the token matches.
        return scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), self.key)

    def _too_large(self, size=None) -> str:
        mib = self.limit / (1024 * 1024)
        got = f" ({size:,} bytes)" if size is not None else ""
        return (f"the request body{got} is over the server's limit of {mib:g} MiB "
                f"({self.limit:,} bytes; --max-body-mb)")

    async def _receive_body(self, receive):
        """The next message of a body still arriving, or `_BodyTimeout` (408)."""
        try:
            return await asyncio.wait_for(receive(), self.body_timeout)
        except asyncio.TimeoutError:
            raise _BodyTimeout(
                f"the request body stopped arriving: nothing came for "
                f"{self.body_timeout:g} s (--body-timeout)", 408,
                {"Connection": "close"}) from None

    async def _drain(self, receive) -> None:
        """Reads and drops the rest of the body, up to `DRAIN_CAP` bytes."""
        dropped = 0
        while dropped <= DRAIN_CAP:
            try:
                message = await self._receive_body(receive)
            except _BodyTimeout:
                return
            if message["type"] != "http.request":
                return
            dropped += len(message.get("body", b""))
            if not message.get("more_body", False):
                return

    def _limited(self, receive):
        received = 0
        limit = self.limit
        whole = False  # Then receive() only waits for the client to disconnect.

        async def limited():
            nonlocal received, whole
            if whole:
                return await receive()
            message = await self._receive_body(receive)
            if message["type"] == "http.request":
                whole = not message.get("more_body", False)
                received += len(message.get("body", b""))
                if received > limit:
                    if message.get("more_body", False):
                        await self._drain(receive)
                    raise _BodyTooLarge(self._too_large(), 413)
            return message

        return limited


def _media_type(request):
    value = request.headers.get("content-type")
    if value is None:
        return None
    return value.split(";", 1)[0].strip().lower() or None


def _check_json_type(request, also=()):
    media = _media_type(request)
    if media is None or media in _JSON_TYPES or media in also or media.endswith("+json"):
        return
    raise RequestError(
        f"unsupported Content-Type {media!r}: send JSON (application/json, or no "
        "Content-Type)" + (f" or {', '.join(also)}" if also else ""), 415)


def build_app(service, settings, *, batcher=None):
    """The FastAPI app serving `service` as `settings` say.

    Args:
        service: A `keras_xception.serve.service.Service` (or an object with
            its attributes and methods).
        settings: A `keras_xception.serve.service.Settings`.
        batcher: What batches `service.predict`; `None` makes a
            `batcher.Batcher` from `settings`. It is started and stopped by
            the app's lifespan.

    Returns:
        A `fastapi.FastAPI` (an ASGI app).
    """
    from keras_xception.checks import require

    require("serve", "keras-xception serve")
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, Response
    from starlette.exceptions import HTTPException

    name = settings.name
    state = {"ready": False}
    metrics = None
    if batcher is None:
        batcher = Batcher(service.predict, max_batch_size=settings.max_batch_size,
                          batch_wait_ms=settings.batch_wait_ms,
                          max_queue=settings.max_queue)
    metrics = _Metrics(lambda: batcher.depth)
    if isinstance(batcher, Batcher):
        batcher._on_batch = metrics.on_batch
    decoders = concurrent.futures.ThreadPoolExecutor(
        max_workers=min(4, os.cpu_count() or 1), thread_name_prefix="keras_xception-decode")

    @contextlib.asynccontextmanager
    async def lifespan(app):
        await batcher.start()
        state["ready"] = True
        try:
            yield
        except asyncio.CancelledError:
            # After a second Ctrl-C uvicorn skips the shutdown event and
            # cancels this task as its loop closes: stop as below, quietly
            # (re-raised, Starlette would log a failed shutdown, traceback and
            # all). Any other cancellation is the caller's, and goes on.
            if not getattr(app.state, "forced_exit", False):
                raise
        finally:
            state["ready"] = False
            await batcher.stop()
            decoders.shutdown(wait=False, cancel_futures=True)

    # No redirect to the same path with a '/' added (a 307 with no body, then
    # a 404): a path no route takes is a 404 naming it at once.
    app = FastAPI(title="keras-xception", lifespan=lifespan, docs_url=None,
                  redoc_url=None, openapi_url=None, redirect_slashes=False)
    app.state.service = service
    app.state.settings = settings
    app.state.batcher = batcher
    app.state.metrics = metrics

    def error(status, message, headers=None):
        return JSONResponse({"error": one_line(message, 500)}, status_code=status,
                            headers=headers)

    @app.exception_handler(RequestError)
    async def on_request_error(request, err):
        return error(err.status, str(err), err.headers)

    @app.exception_handler(QueueFull)
    async def on_queue_full(request, err):
        return error(503, str(err), {"Retry-After": str(settings.retry_after_s)})

    @app.exception_handler(Stopped)
    async def on_stopped(request, err):
        return error(503, str(err), {"Retry-After": str(settings.retry_after_s)})

    @app.exception_handler(XceptionError)
    async def on_expected(request, err):  # ConfigError, ImageError: the client's input.
        return error(400, str(err))

    @app.exception_handler(HTTPException)
    async def on_http(request, err):
        if err.status_code == 404:
            message = f"no route {request.method} {request.url.path}; see docs/serve.md"
        elif err.status_code == 405:
            allowed = (err.headers or {}).get("Allow", "another method").split(", ")
            message = (f"{request.method} is not allowed on {request.url.path}; "
                       f"use {', '.join(m for m in allowed if m != 'HEAD')}")
        else:
            message = str(err.detail)
        return error(err.status_code, message, err.headers)

    @app.exception_handler(RequestValidationError)
    async def on_invalid(request, err):
        return error(400, "the request is not valid")

    @app.exception_handler(Exception)
    async def on_bug(request, err):  # _Guard logs the traceback.
        return error(500, INTERNAL_ERROR)

    async def off_loop(fn, *args):
        return await asyncio.get_running_loop().run_in_executor(decoders, fn, *args)

    def check_count(count):
        if count > batcher.max_queue:
            raise RequestError(f"a request holds at most {batcher.max_queue} images "
                               f"(the queue's size, --max-queue). Received: {count}")

    async def run_images(items):
        """Outputs for the request's `(label, payload)` items, through the batcher."""
        check_count(len(items))
        with batcher.reserve(len(items)) as room:
            pixels = await off_loop(service.pixels, items)
            return await batcher.submit(pixels, room)

    async def image_body(request) -> bytes:
        media = _media_type(request)
        if media == "multipart/form-data":
            form = await request.form()
            upload = form.get("image")
            if upload is None or isinstance(upload, str):
                raise RequestError('a multipart body needs a file field "image" (the photo)')
            return await upload.read()
        # `curl --data-binary @photo.jpg` says application/x-www-form-urlencoded.
        if media is None or media in _RAW_TYPES or media.startswith("image/"):
            data = await request.body()
            if not data:
                raise RequestError("the body is empty: send the photo as the body or as "
                                   'the multipart field "image"')
            return data
        raise RequestError(f"unsupported Content-Type {media!r}: send the photo as the body "
                           "(image/*, application/octet-stream) or as the multipart field "
                           '"image" (multipart/form-data)', 415)

    def not_found(model):
        return RequestError(f"no model named {model!r} here; this server serves {name!r}",
                            404)

    def allow(request, *methods):
        if request.method not in methods:
            raise RequestError(f"{request.method} is not allowed on {request.url.path}; "
                               f"use {', '.join(m for m in methods if m != 'HEAD')}", 405,
                               {"Allow": ", ".join(methods)})

    # GET routes answer HEAD too, without the body (probes, curl -I).
    get = functools.partial(app.api_route, methods=["GET", "HEAD"])

    # --- the page and metrics ------------------------------------------------------

    # The page learns the model's name from its <body data-model="...">.
    index_html = render_page(name)

    @get("/")
    async def page():
        return Response(index_html, media_type="text/html; charset=utf-8")

    @get("/page/index.html")
    async def page_elsewhere():
        # Its links are relative to `/` (and stay so behind a proxy's prefix):
        # served here, they would point under /page/page/.
        return Response(status_code=308, headers={"Location": "../"})

    from starlette.staticfiles import StaticFiles

    app.mount("/page", StaticFiles(directory=PAGE_DIR, check_dir=False), name="page")

    @get("/metrics")
    async def prometheus():
        body, media = metrics.render()
        return Response(body, media_type=media)

    # --- Open Inference Protocol --------------------------------------------------

    @get("/v2")
    async def v2_metadata():
        return oip.server_metadata()

    @get("/v2/health/live")
    async def live():
        return {"live": True}

    @get("/v2/health/ready")
    async def ready():
        if not state["ready"]:
            return error(503, "not ready")
        return {"ready": True}

    def model_route(pattern, target, request, version):
        """The parts of a `/v1/models/...` or `/v2/models/...` path naming this
        model (and its one version, if any), or the 404 saying what is wrong."""
        match = pattern.fullmatch(target)
        if match is None:
            raise RequestError(f"no route {request.method} {request.url.path}; see "
                               "docs/serve.md", 404)
        if match["name"] != name:
            raise not_found(match["name"])
        if match["version"] not in (None, version):
            raise RequestError(f"model {name!r} has one version, {version!r}. "
                               f"Received: version {match['version']!r}", 404)
        return match

    @app.api_route("/v2/models/{target:path}", methods=_ALL_METHODS)
    async def v2_models(target: str, request: Request):
        match = model_route(_V2, target, request, oip.VERSION)
        verb = match["verb"]
        if verb != "infer":
            allow(request, "GET", "HEAD")
            if verb == "ready":
                if not state["ready"]:
                    return error(503, "not ready")
                return {"name": name, "ready": True}
            return oip.model_metadata(service, name)
        allow(request, "POST")
        _check_json_type(request, also=("application/octet-stream",))
        body = await request.body()
        infer = await off_loop(oip.parse_infer, body,
                               request.headers.get(oip.HEADER_LENGTH), service)
        outputs = await run_images(infer.items)
        content, headers = await off_loop(oip.infer_response, service, name, infer, outputs)
        media = headers.pop("Content-Type")
        return Response(content, media_type=media, headers=headers)

    # --- TensorFlow Serving, classify, explain ----------------------------------------

    @app.api_route("/v1/models/{target:path}", methods=_ALL_METHODS)
    async def v1_models(target: str, request: Request):
        match = model_route(_V1, target, request, tfserving.VERSION)
        verb = match["verb"]
        if verb is None:
            allow(request, "GET", "HEAD")
            if match["metadata"]:
                return tfserving.model_metadata(service, name)
            return tfserving.model_status()
        if verb not in _V1_VERBS:
            raise RequestError(f"unknown method :{verb}; this server answers "
                               f"{', '.join(':' + v for v in _V1_VERBS)}", 404)
        allow(request, "POST")
        if verb == "predict":
            _check_json_type(request)
            body = await request.body()
            items, columnar = await off_loop(tfserving.parse_predict, body)
            outputs = await run_images(items)
            # Encoded off the loop: an answer can hold many thousands of floats.
            content = await off_loop(
                lambda: _json_encode(tfserving.predict_response(outputs, columnar)))
            return Response(content, media_type="application/json")
        if verb == "classify":
            top = service.check_top(request.query_params.get("top"))
            data = await image_body(request)
            outputs = await run_images([("the image", data)])
            return {"predictions": service.top(outputs[0], top)}
        # explain
        class_text = request.query_params.get("class")
        alpha = _alpha_query(request)
        service.check_explain()  # No classes, or int8: before reading the body.
        data = await image_body(request)
        with batcher.reserve(1):
            png, index, score = await batcher.run_exclusive(
                functools.partial(service.explain, data, class_text, alpha=alpha))
        return Response(png, media_type="image/png", headers={
            "X-Class-Index": str(index),
            "X-Class-Name": urllib.parse.quote(service.source.class_name(index)),
            "X-Score": f"{score:.6f}",
        })

    app.add_middleware(_Guard, settings=settings, metrics=metrics)
    return app


def render_page(name: str) -> bytes:
    """`page/index.html` with the model's name filled in (HTML-escaped)."""
    import html

    template = (PAGE_DIR / "index.html").read_text(encoding="utf-8")
    return template.replace("{{MODEL_NAME}}", html.escape(name, quote=True)).encode()


def _json_encode(payload) -> bytes:
    import json

    return json.dumps(payload).encode()


def _alpha_query(request):
    text = request.query_params.get("alpha")
    if text is None:
        return 0.4
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 <= value <= 1:
        raise RequestError(f"alpha must be a number from 0 to 1. Received: alpha={text!r}")
    return value
