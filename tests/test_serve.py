"""`keras-xception serve`: both protocols, batching, limits, errors, the key, a real client.

One server for the module: the kitchenware model (six classes, saved with
their names) behind `keras_xception.serve.local`'s uvicorn server on a
thread, on 127.0.0.1 and a free port, float32, with an API key. The
references are computed before it starts, by the library's plain Keras
`predict` (the model's own rules from `keras_xception.source`) on pixels
decoded by the package (for encoded images) or by Pillow here (for pixels
sent as numbers). One subprocess test covers what only a real process shows:
SIGTERM draining a request in flight, exit status 0, stdout empty.
"""

import asyncio
import base64
import concurrent.futures
import http.client
import io
import json
import logging
import os
import pathlib
import re
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from tests import servers
from tests.realweights import pillow_pixels

KEY = "test-key-0123456789"
AUTH = {"Authorization": f"Bearer {KEY}"}
CLASSES = ["cup", "fork", "glass", "knife", "plate", "spoon"]
MAX_QUEUE = 40
MAX_BODY_MB = 4
MAX_PIXELS = 1_000_000  # The photos are 750x1000.
ATOL = 1e-5
ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def kitchen_file(kitchen_model, tmp_path_factory):
    """The kitchenware model saved with its class names."""
    return servers.save_kitchen(kitchen_model, tmp_path_factory.mktemp("serve"), CLASSES)


class Server:
    """The module's server: its URL, service, batcher, loop and what it received."""

    def __init__(self, url, service, app, loop, received):
        self.url, self.service, self.app, self.loop = url, service, app, loop
        self.port = int(url.rsplit(":", 1)[1])
        self.received = received

    def call(self, method, path, body=None, headers=None, auth=True, timeout=60):
        """`(status, headers, body)` of one request on a fresh connection."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request(method, path, body=body,
                         headers={**(AUTH if auth else {}), **(headers or {})})
            response = conn.getresponse()
            return response.status, dict(response.getheaders()), response.read()
        finally:
            conn.close()

    def post_json(self, path, payload, headers=None):
        status, head, body = self.call("POST", path, json.dumps(payload).encode(),
                                       {"Content-Type": "application/json",
                                        **(headers or {})})
        return status, head, json.loads(body)


@pytest.fixture(scope="module")
def photos(kitchen_photos):
    return kitchen_photos[:6]


@pytest.fixture(scope="module")
def server(kitchen_file):
    from keras_xception.serve.app import build_app
    from keras_xception.serve.service import Service, Settings, open_model

    service = Service(open_model(str(kitchen_file)), precision="float32",
                      max_pixels=MAX_PIXELS)
    service.warm_up(4)
    settings = Settings(max_batch_size=4, batch_wait_ms=20, max_queue=MAX_QUEUE,
                        max_body_mb=MAX_BODY_MB, api_key=KEY)
    app = build_app(service, settings)
    received = []

    class Recorder:
        """Keeps each infer request's headers and body, to show what clients send."""

        def __init__(self, inner):
            self.inner = inner

        async def __call__(self, scope, receive, send):
            if scope["type"] != "http" or not scope["path"].endswith("/infer"):
                return await self.inner(scope, receive, send)
            record = {"headers": {k.decode().lower(): v.decode()
                                  for k, v in scope["headers"]}, "body": b""}
            received.append(record)

            async def recording():
                message = await receive()
                record["body"] += message.get("body", b"")
                return message

            return await self.inner(scope, recording, send)

    with servers.serving(Recorder(app)) as (url, loop):
        yield Server(url, service, app, loop, received)


@pytest.fixture(scope="module")
def reference(server, photos):
    """The library's answers: Keras `predict` with the source's rules."""
    from keras_xception.images import decode

    loaded = server.service.loaded
    size = server.service.input_size

    def predict(pixels):
        return loaded.scores(loaded.model.predict(loaded.prepare(pixels), verbose=0))

    decoded = np.stack([decode(p, size) for p in photos])
    pillow = pillow_pixels(photos, size[0])
    return {"files": [p.read_bytes() for p in photos],
            "decoded": predict(decoded), "pillow": pillow,
            "pillow_scores": predict(pillow)}


def b64(data):
    return base64.b64encode(data).decode()


def assert_error(status, body, want_status, *words):
    """A one-line `{"error": ...}` with `want_status`, naming `words`, no server detail."""
    payload = json.loads(body) if isinstance(body, (bytes, str)) else body
    assert status == want_status, (status, payload)
    assert list(payload) == ["error"], payload
    message = payload["error"]
    assert "\n" not in message and "Traceback" not in message
    assert str(ROOT) not in message and "site-packages" not in message, message
    for word in words:
        assert word in message, (word, message)
    return message


def png_bytes(width, height, color=(200, 30, 30)):
    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (width, height), color).save(out, format="PNG")
    return out.getvalue()


# --- TensorFlow Serving --------------------------------------------------------------


def test_tfserving_rows_and_columns_equal_the_library(server, reference):
    files = reference["files"][:3]
    status, _, rows = server.post_json(
        "/v1/models/xception:predict", {"instances": [{"b64": b64(f)} for f in files]})
    assert status == 200, rows
    np.testing.assert_allclose(rows["predictions"], reference["decoded"][:3], atol=ATOL)
    # Columnar, naming the input, with Pillow's pixels as nested lists.
    pixels = reference["pillow"][:2]
    status, _, columns = server.post_json(
        "/v1/models/xception:predict", {"inputs": {"images": pixels.tolist()}})
    assert status == 200, columns
    assert list(columns) == ["outputs"]
    np.testing.assert_allclose(columns["outputs"], reference["pillow_scores"][:2],
                               atol=ATOL)
    # Row format with the signature named; a probability row sums to 1.
    status, _, one = server.post_json(
        "/v1/models/xception:predict",
        {"signature_name": "serving_default", "instances": [pixels[0].tolist()]})
    assert status == 200 and abs(sum(one["predictions"][0]) - 1) < 1e-5


def test_tfserving_status_and_metadata(server):
    status, _, body = server.call("GET", "/v1/models/xception")
    assert status == 200
    assert json.loads(body)["model_version_status"][0]["state"] == "AVAILABLE"
    status, _, body = server.call("GET", "/v1/models/xception/metadata")
    signature = json.loads(body)["metadata"]["signature_def"]["signature_def"][
        "serving_default"]
    assert status == 200
    assert [d["size"] for d in signature["inputs"]["images"]["tensor_shape"]["dim"]] == [
        "-1", "150", "150", "3"]
    assert [d["size"] for d in
            signature["outputs"]["probabilities"]["tensor_shape"]["dim"]] == ["-1", "6"]


# --- Open Inference Protocol -----------------------------------------------------------


def _binary_infer(server, name, datatype, shape, raw, outputs=None, parameters=None):
    request = {"inputs": [{"name": name, "datatype": datatype, "shape": shape,
                           "parameters": {"binary_data_size": len(raw)}}]}
    if outputs is not None:
        request["outputs"] = outputs
    if parameters is not None:
        request["parameters"] = parameters
    header = json.dumps(request).encode()
    return server.call("POST", "/v2/models/xception/infer", header + raw,
                       {"Inference-Header-Content-Length": str(len(header))})


def _read_binary(headers, body):
    length = int(headers["inference-header-content-length"])
    answer = json.loads(body[:length])
    return answer, body[length:]


def test_oip_json_and_binary_equal_the_library(server, reference):
    files = reference["files"][:2]
    # Plain JSON: base64 strings.
    status, _, answer = server.post_json("/v2/models/xception/infer", {
        "id": "r1",
        "inputs": [{"name": "image", "datatype": "BYTES", "shape": [2],
                    "data": [b64(f) for f in files]}]})
    assert status == 200, answer
    assert answer["id"] == "r1" and answer["model_name"] == "xception"
    (output,) = answer["outputs"]
    assert (output["name"], output["datatype"], output["shape"]) == (
        "probabilities", "FP32", [2, 6])
    np.testing.assert_allclose(np.reshape(output["data"], (2, 6)),
                               reference["decoded"][:2], atol=ATOL)
    # Binary pixels in, binary probabilities out.
    pixels = reference["pillow"][:3]
    status, headers, body = _binary_infer(
        server, "pixels", "FP32", list(pixels.shape), pixels.astype("<f4").tobytes(),
        parameters={"binary_data_output": True})
    assert status == 200, body
    headers = {k.lower(): v for k, v in headers.items()}
    answer, raw = _read_binary(headers, body)
    (output,) = answer["outputs"]
    assert output["parameters"]["binary_data_size"] == len(raw) == 3 * 6 * 4
    np.testing.assert_allclose(np.frombuffer(raw, "<f4").reshape(3, 6),
                               reference["pillow_scores"][:3], atol=ATOL)
    # UINT8 pixels as JSON numbers, the output asked for by name in JSON.
    status, _, answer = server.post_json("/v2/models/xception/infer", {
        "inputs": [{"name": "pixels", "datatype": "UINT8", "shape": [1, 150, 150, 3],
                    "data": pixels[0].astype(np.uint8).ravel().tolist()}],
        "outputs": [{"name": "probabilities", "parameters": {"binary_data": False}}]})
    assert status == 200, answer
    np.testing.assert_allclose(answer["outputs"][0]["data"], reference["pillow_scores"][0],
                               atol=ATOL)


def test_oip_metadata_health_and_extension(server):
    status, _, body = server.call("GET", "/v2")
    assert status == 200 and "binary_tensor_data" in json.loads(body)["extensions"]
    status, _, body = server.call("GET", "/v2/models/xception")
    meta = json.loads(body)
    assert [i["name"] for i in meta["inputs"]] == ["image", "pixels"]
    assert meta["outputs"] == [{"name": "probabilities", "datatype": "FP32",
                                "shape": [-1, 6]}]
    for path in ("/v2/health/live", "/v2/health/ready"):  # No key needed.
        assert server.call("GET", path, auth=False)[0] == 200
    assert server.call("GET", "/v2/models/xception/ready")[0] == 200
    assert server.call("GET", "/v2/models/xception/versions/1/ready")[0] == 200


def test_stock_tritonclient_with_and_without_binary_data(server, reference):
    import tritonclient.http as triton

    client = triton.InferenceServerClient(url=f"127.0.0.1:{server.port}")
    # A fresh dict per call: the client adds Inference-Header-Content-Length to
    # the headers dict it is given, in place.
    auth = lambda: dict(AUTH)  # noqa: E731
    try:
        assert client.is_server_live() and client.is_server_ready()
        assert client.is_model_ready("xception", headers=auth())
        assert "binary_tensor_data" in client.get_server_metadata(headers=auth())[
            "extensions"]
        files = reference["files"][:2]
        # Binary (the client's default), no outputs named.
        image = triton.InferInput("image", [2], "BYTES")
        image.set_data_from_numpy(np.array(files, dtype=object))
        before = len(server.received)
        result = client.infer("xception", [image], headers=auth())
        np.testing.assert_allclose(result.as_numpy("probabilities"),
                                   reference["decoded"][:2], atol=ATOL)
        # What it sent: no Content-Type, the JSON header's length in bytes, and
        # binary outputs asked for since no output was named.
        sent = server.received[before]
        assert "content-type" not in sent["headers"]
        length = int(sent["headers"]["inference-header-content-length"])
        header = json.loads(sent["body"][:length])
        assert header["parameters"] == {"binary_data_output": True}
        assert len(sent["body"]) == length + header["inputs"][0]["parameters"][
            "binary_data_size"]
        # JSON only: base64 strings in, JSON numbers out.
        image = triton.InferInput("image", [1], "BYTES")
        image.set_data_from_numpy(np.array([b64(files[1])], dtype=object),
                                  binary_data=False)
        wanted = triton.InferRequestedOutput("probabilities", binary_data=False)
        result = client.infer("xception", [image], outputs=[wanted], headers=auth())
        assert "data" in result.get_response()["outputs"][0]
        np.testing.assert_allclose(result.as_numpy("probabilities")[0],
                                   reference["decoded"][1], atol=ATOL)
        assert "inference-header-content-length" not in server.received[-1]["headers"]
        # FP32 pixels, binary in and out.
        pixels = triton.InferInput("pixels", [2, 150, 150, 3], "FP32")
        pixels.set_data_from_numpy(reference["pillow"][:2])
        result = client.infer("xception", [pixels], headers=auth())
        np.testing.assert_allclose(result.as_numpy("probabilities"),
                                   reference["pillow_scores"][:2], atol=ATOL)
        # A bad input: the client raises the server's one line.
        wrong = triton.InferInput("photo", [1], "BYTES")
        wrong.set_data_from_numpy(np.array([files[0]], dtype=object))
        with pytest.raises(Exception, match="unknown input 'photo'"):
            client.infer("xception", [wrong], headers=auth())
    finally:
        client.close()


# --- classify and explain ------------------------------------------------------------


def test_classify_raw_and_multipart(server, reference):
    status, _, body = server.call("POST", "/v1/models/xception:classify?top=3",
                                  reference["files"][0], {"Content-Type": "image/jpeg"})
    assert status == 200, body
    predictions = json.loads(body)["predictions"]
    order = np.argsort(-reference["decoded"][0])[:3]
    assert [p["class_index"] for p in predictions] == order.tolist()
    assert [p["class_name"] for p in predictions] == [CLASSES[i] for i in order]
    np.testing.assert_allclose([p["score"] for p in predictions],
                               reference["decoded"][0][order], atol=ATOL)
    boundary = "xxBOUNDARYxx"
    form = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; "
            f"filename=\"p.jpg\"\r\nContent-Type: image/jpeg\r\n\r\n").encode() \
        + reference["files"][1] + f"\r\n--{boundary}--\r\n".encode()
    status, _, body = server.call("POST", "/v1/models/xception:classify", form,
                                  {"Content-Type": f"multipart/form-data; boundary={boundary}"})
    assert status == 200, body
    predictions = json.loads(body)["predictions"]
    assert len(predictions) == 5  # The default top.
    assert predictions[0]["class_index"] == int(np.argmax(reference["decoded"][1]))


@pytest.mark.slow
def test_explain_answers_the_overlay_at_the_photos_size(server, reference):
    from PIL import Image

    data = reference["files"][0]
    status, headers, body = server.call("POST", "/v1/models/xception:explain?class=plate",
                                        data, {"Content-Type": "image/jpeg"})
    assert status == 200, body
    assert headers["content-type"] == "image/png"
    assert headers["x-class-index"] == "4" and headers["x-class-name"] == "plate"
    with Image.open(io.BytesIO(data)) as photo, Image.open(io.BytesIO(body)) as png:
        assert png.format == "PNG" and png.size == photo.size
    status, headers, _ = server.call("POST", "/v1/models/xception:explain", data)
    assert status == 200
    assert int(headers["x-class-index"]) == int(np.argmax(reference["decoded"][0]))


# --- batching, backpressure, limits ---------------------------------------------------


@pytest.mark.slow
def test_32_concurrent_requests_each_get_their_own_answer(server, reference):
    files = reference["files"]
    batches_before = _metric(server, "keras_xception_batch_size_count")

    def one(i):
        k = i % len(files)
        status, _, body = server.post_json("/v1/models/xception:predict",
                                           {"instances": [{"b64": b64(files[k])}]})
        return k, status, body

    with concurrent.futures.ThreadPoolExecutor(32) as pool:
        results = list(pool.map(one, range(32)))
    for k, status, body in results:
        assert status == 200, body
        np.testing.assert_allclose(body["predictions"][0], reference["decoded"][k],
                                   atol=ATOL)
    batches = _metric(server, "keras_xception_batch_size_count") - batches_before
    assert batches < 32  # Requests shared model calls.


def _metric(server, name):
    status, _, body = server.call("GET", "/metrics")
    assert status == 200
    match = re.search(rf"^{name}(?:{{[^}}]*}})? (\S+)$", body.decode(), re.M)
    return float(match.group(1)) if match else 0.0


@pytest.mark.slow
def test_a_full_queue_answers_503_at_once(server, reference):
    batcher = server.app.state.batcher
    blocked = threading.Event()
    # Hold the model thread, so images wait in the queue.
    hold = asyncio.run_coroutine_threadsafe(batcher.run_exclusive(blocked.wait),
                                            server.loop)
    first = concurrent.futures.ThreadPoolExecutor(1)
    try:
        pixels = reference["pillow"][:1].astype(np.uint8)  # 2.7 MB for 40: under the limit.
        many = np.repeat(pixels, MAX_QUEUE, axis=0)
        waiting = first.submit(_binary_infer, server, "pixels", "UINT8",
                               list(many.shape), many.tobytes())
        # The batching loop takes its first 4 into a model call (held), so 36
        # wait: a request of 5 more images would pass the queue's 40.
        waiting_images = MAX_QUEUE - 4
        deadline = time.monotonic() + 30
        while batcher.depth != waiting_images and time.monotonic() < deadline:
            time.sleep(0.01)  # The request above is being parsed and queued.
        assert batcher.depth == waiting_images
        status, headers, body = server.post_json(
            "/v1/models/xception:predict",
            {"instances": [{"b64": b64(reference["files"][0])}] * 5})
        # At once: answered while the model is still held, nothing having moved
        # through the queue, rather than after waiting for room.
        assert not hold.done() and not waiting.done()
        assert batcher.depth == waiting_images
        assert_error(status, body, 503, "busy", "36 images waiting for the model")
        assert headers["retry-after"] == "1"
        metrics = server.call("GET", "/metrics")[2].decode()
        assert f"keras_xception_queue_images {waiting_images}.0" in metrics
    finally:
        blocked.set()
        hold.result(30)
    status, _, body = waiting.result(60)
    first.shutdown()
    assert status == 200
    answer = json.loads(body)  # No binary output asked for: JSON.
    out = np.reshape(answer["outputs"][0]["data"], (MAX_QUEUE, 6))
    np.testing.assert_allclose(out, np.repeat(reference["pillow_scores"][:1], MAX_QUEUE, 0),
                               atol=ATOL)


def test_a_body_over_the_limit_is_413_and_read_not_reset(server):
    big = b"x" * (MAX_BODY_MB * 1024 * 1024 + 1)
    status, _, body = server.call("POST", "/v1/models/xception:predict", big,
                                  {"Content-Type": "application/json"})
    assert_error(status, body, 413, "limit of 4 MiB")
    # Without Content-Length (chunked): stopped once it passes the limit.
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    try:
        chunks = (big[i:i + (1 << 20)] for i in range(0, len(big), 1 << 20))
        conn.request("POST", "/v1/models/xception:classify", body=chunks,
                     headers={**AUTH, "Content-Type": "image/jpeg"}, encode_chunked=True)
        response = conn.getresponse()
        assert_error(response.status, response.read(), 413, "limit")
    finally:
        conn.close()


def test_more_images_than_the_queue_in_one_request_is_400(server):
    status, _, body = server.post_json("/v1/models/xception:predict",
                                       {"instances": [{"b64": "AAAA"}] * (MAX_QUEUE + 1)})
    assert_error(status, body, 400, "at most 40 images")


# --- errors -------------------------------------------------------------------------------


def test_every_bad_tfserving_input_is_a_one_line_400(server, reference):
    text = b64(b"not an image at all")
    photo = reference["pillow"][0].tolist()
    nan = reference["pillow"][0].copy()
    nan[3, 4, 1] = np.nan
    deep = 100_000
    cases = [
        (b"{not json", ["not JSON"]),
        (b'{"instances": ' + b"[" * deep + b"]" * deep + b"}", ["nested too deeply"]),
        (json.dumps({"instances": [], "inputs": []}), ["exactly one of"]),
        (json.dumps({"instances": []}), ["no images"]),
        (json.dumps({"instances": [{"b64": b64(reference["files"][0])},
                                   {"b64": "@@not base64@@"}]}), ["instance 1", "base64"]),
        (json.dumps({"instances": [{"b64": text}]}), ["instance 0", "not an image file"]),
        (json.dumps({"instances": [[[[1, 2, 3]] * 2] * 2]}), ["instance 0", "(2, 2, 3)"]),
        (json.dumps({"instances": [photo, nan.tolist()]}), ["instance 1", "NaN"]),
        (json.dumps({"instances": [(reference["pillow"][0] + 300).tolist()]}),
         ["instance 0", "from 0 to 255"]),
        (json.dumps({"instances": [{"b64": b64(png_bytes(1100, 1000))}]}),
         ["instance 0", "over the limit"]),
        (json.dumps({"instances": [{"image": "x"}]}), ["instance 0"]),
        (json.dumps({"inputs": {"photos": [photo]}}), ["'images'", "'photos'"]),
        (json.dumps({"instances": [photo], "signature_name": "other"}),
         ["serving_default"]),
    ]
    for payload, words in cases:
        body = payload if isinstance(payload, bytes) else payload.encode()
        status, _, answer = server.call("POST", "/v1/models/xception:predict", body,
                                        {"Content-Type": "application/json"})
        assert_error(status, answer, 400, *words)


def test_every_bad_oip_input_is_a_one_line_400(server, reference):
    pixels = reference["pillow"][:1].astype("<f4")
    cases = [
        ({"inputs": [{"name": "photo", "datatype": "BYTES", "shape": [1], "data": ["x"]}]},
         ["unknown input 'photo'"]),
        ({"inputs": [{"name": "pixels", "datatype": "INT64", "shape": [1, 150, 150, 3],
                      "data": [0]}]}, ["FP32 or UINT8", "INT64"]),
        ({"inputs": [{"name": "pixels", "datatype": "FP32", "shape": [1, 10, 10, 3],
                      "data": [0] * 300}]}, ["[N, 150, 150, 3]"]),
        ({"inputs": [{"name": "pixels", "datatype": "FP32", "shape": [1, 150, 150, 3],
                      "data": [0] * 7}]}, ["holds 7 numbers"]),
        ({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1],
                      "data": ["%%%"]}]}, ["image[0]", "base64"]),
        ({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1],
                      "data": [b64(b"text")]}]}, ["image[0]", "not an image file"]),
        ({"inputs": [{"name": "image", "datatype": "FP32", "shape": [1], "data": [1]}]},
         ["must be BYTES"]),
        ({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1],
                      "data": [b64(reference["files"][0])]}],
          "outputs": [{"name": "logits"}]}, ["unknown output 'logits'"]),
        ({"inputs": []}, ["exactly one input"]),
        # Fields of the wrong JSON type, where the protocol has an object or a string.
        ({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1],
                      "data": [b64(reference["files"][0])], "parameters": [1]}]},
         ["\"parameters\" of input 'image' must be an object", "list"]),
        ({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1],
                      "data": [b64(reference["files"][0])]}],
          "outputs": [{"name": "probabilities", "parameters": "x"}]},
         ["\"parameters\" of output 'probabilities' must be an object", "str"]),
        ({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1],
                      "data": [b64(reference["files"][0])]}], "parameters": 3},
         ["\"parameters\" of the request must be an object", "int"]),
        ({"inputs": [{"name": "pixels", "datatype": ["FP32"], "shape": [1, 150, 150, 3],
                      "data": [1]}]}, ["FP32 or UINT8", "['FP32']"]),
    ]
    for payload, words in cases:
        status, _, answer = server.post_json("/v2/models/xception/infer", payload)
        assert_error(status, answer, 400, *words)
    deep = b'{"inputs": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    status, _, body = server.call("POST", "/v2/models/xception/infer", deep)
    assert_error(status, body, 400, "nested too deeply")
    # Binary: a non-finite pixel, a wrong header length, bytes no input claims.
    nan = pixels.copy()
    nan[0, 1, 2, 0] = np.inf
    status, _, body = _binary_infer(server, "pixels", "FP32", [1, 150, 150, 3], nan.tobytes())
    assert_error(status, body, 400, "pixels[0]", "NaN or infinite")
    status, _, body = server.call("POST", "/v2/models/xception/infer", b"{}",
                                  {"Inference-Header-Content-Length": "99"})
    assert_error(status, body, 400, "Inference-Header-Content-Length")
    status, _, body = _binary_infer(server, "pixels", "FP32", [1, 150, 150, 3],
                                    pixels.tobytes()[:-4])
    assert_error(status, body, 400, "needs 270000 bytes")


def test_routes_methods_and_content_types(server, reference):
    photo = reference["files"][0]
    checks = [
        (("GET", "/v1/models/xception:predict"), 405, ["use POST"]),
        (("POST", "/v1/models/xception"), 405, ["use GET"]),
        (("GET", "/v2/models/xception/infer"), 405, ["use POST"]),
        (("POST", "/v1/models/resnet:predict", b"{}"), 404, ["'resnet'", "'xception'"]),
        (("POST", "/v2/models/resnet/infer", b"{}"), 404, ["'resnet'"]),
        (("GET", "/v2/models/xception/versions/2/ready"), 404, ["version"]),
        (("POST", "/v1/models/xception:regress", b"{}"), 404, [":predict"]),
        (("GET", "/nothing/here"), 404, ["/nothing/here"]),
        (("GET", "/v1/models"), 404, ["GET /v1/models;"]),  # not a redirect to .../
        (("POST", "/metrics"), 405, []),
        (("POST", "/v1/models/xception:predict", b"{}", {"Content-Type": "text/plain"}),
         415, ["text/plain"]),
        (("POST", "/v2/models/xception/infer", b"{}", {"Content-Type": "image/png"}),
         415, ["image/png"]),
        (("POST", "/v1/models/xception:classify", b"{}",
          {"Content-Type": "application/json"}), 415, ["application/json"]),
        (("POST", "/v1/models/xception:classify", b"just text"), 400,
         ["the image", "not an image file"]),
        (("POST", "/v1/models/xception:classify", b""), 400, ["empty"]),
        *((("POST", f"/v1/models/xception:classify?top={top}", photo), 400,
           ["top must be an integer from 1 to 6", f"Received: top='{top}'"])
          for top in ("7", "0", "-1", "many")),
        (("POST", "/v1/models/xception:explain?class=99", photo), 400,
         ["class must be a class index from 0 to 5", "Received: class='99'"]),
        (("POST", "/v1/models/xception:explain?class=teapot", photo), 400,
         ["'teapot'", "not a class"]),
        (("POST", "/v1/models/xception:explain?alpha=2", photo), 400, ["alpha"]),
        (("POST", "/v1/models/xception:classify", b"--b--\r\n",
          {"Content-Type": "multipart/form-data; boundary=b"}), 400, ['"image"']),
    ]
    for args, want, words in checks:
        status, headers, body = server.call(*args)
        message = assert_error(status, body, want, *words)
        assert "--" not in message and "`" not in message, message  # Not the CLI's words.
        if want == 405:
            assert "allow" in {k.lower() for k in headers}


def test_head_is_answered_like_get_without_the_body(server):
    for path, auth in (("/", False), ("/v2/health/ready", False), ("/v2", True),
                       ("/v1/models/xception", True), ("/v2/models/xception", True),
                       ("/metrics", True)):
        status, headers, body = server.call("HEAD", path, auth=auth)
        assert (status, body) == (200, b""), (path, status)
        assert headers["content-type"] == server.call("GET", path)[1]["content-type"]
    status, _, body = server.call("POST", "/metrics")
    assert_error(status, body, 405, "use GET")
    assert "HEAD" not in json.loads(body)["error"]


def test_explain_on_an_int8_model_is_one_line_naming_the_float32_model(
        server, reference, monkeypatch):
    import dataclasses

    from keras_xception.source import INT8

    # The float32 model stands in for the int8 one: only the source's kind is read.
    monkeypatch.setattr(server.service, "source",
                        dataclasses.replace(server.service.source, kind=INT8))
    status, _, body = server.call("POST", "/v1/models/xception:explain",
                                  reference["files"][0])
    assert_error(status, body, 501, "this model is int8", "serve the float32 model")
    status, _, body = server.call("POST", "/v1/models/xception:classify",
                                  reference["files"][0])
    assert status == 200, body


def test_an_unexpected_error_is_a_generic_500(server, reference, monkeypatch):
    def broken(*args):
        raise RuntimeError(f"secret detail in {ROOT}/keras_xception/serve/app.py")

    monkeypatch.setattr(server.service, "top", broken)
    status, _, body = server.call("POST", "/v1/models/xception:classify",
                                  reference["files"][0])
    message = assert_error(status, body, 500, "internal server error")
    assert "secret" not in message


class LogRecords(logging.Handler):
    """The records of the server's loggers while in a `with` block."""

    NAMES = ("keras_xception.serve", "uvicorn.error")

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.records = []

    def emit(self, record):
        self.records.append(record)

    def __enter__(self):
        for name in self.NAMES:
            logging.getLogger(name).addHandler(self)
        return self.records

    def __exit__(self, *exc):
        for name in self.NAMES:
            logging.getLogger(name).removeHandler(self)


def _send_part_of_a_body(port, path="/v1/models/xception:predict"):
    """A socket that sent a request's headers and 10 of the 1000 bytes it declares."""
    import socket

    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n"
                 "Content-Length: 1000\r\n\r\n".encode() + b"[" * 10)
    return sock


def test_a_client_gone_mid_body_is_counted_499_without_a_traceback(server):
    metric = 'keras_xception_requests_total{route="predict",status="499"}'
    with LogRecords() as records:
        _send_part_of_a_body(server.port).close()
        deadline = time.monotonic() + 30
        while metric not in server.call("GET", "/metrics")[2].decode():
            assert time.monotonic() < deadline, "the disconnect was never counted"
            time.sleep(0.02)
    logged = [r for r in records if "/v1/models/xception:predict" in r.getMessage()]
    assert len(logged) == 1 and logged[0].exc_info is None, logged
    assert logged[0].levelno < logging.WARNING


def _bare_app(**settings):
    """The app over a stand-in model that is never called: for what happens to a
    request before any model work (reading its body, shutting down)."""
    import types

    from keras_xception.serve.app import build_app
    from keras_xception.serve.service import Settings

    return build_app(types.SimpleNamespace(predict=lambda pixels: pixels),
                     Settings(max_batch_size=1, api_key=KEY, **settings))


def _read_response(sock):
    response = http.client.HTTPResponse(sock)
    response.begin()
    return response.status, dict(response.getheaders()), response.read()


def test_a_body_that_stops_arriving_is_408_and_the_connection_closed():
    with servers.serving(_bare_app(body_timeout_s=0.5)) as (url, _):
        with _send_part_of_a_body(int(url.rsplit(":", 1)[1])) as sock:
            status, headers, body = _read_response(sock)
            assert_error(status, body, 408, "--body-timeout")
            assert headers["connection"] == "close"
            assert sock.recv(1) == b""  # Closed: the slot is free.


def test_a_body_still_arriving_past_the_grace_period_is_one_line():
    logs = LogRecords()  # Added once the server has set its logging up.
    try:
        with servers.serving(_bare_app(), grace=0.2) as (url, _):
            records = logs.__enter__()
            port = int(url.rsplit(":", 1)[1])
            sock = _send_part_of_a_body(port)
            # Answered after the request above reached the app, sent before it.
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            conn.request("GET", "/v2/health/live")
            assert conn.getresponse().status == 200
            conn.close()
    finally:
        logs.__exit__()
    with sock:  # Left at shutdown: cancelled after the grace period, then answered.
        assert_error(*_read_response(sock)[::2], 503, "stopped")
    assert [r for r in records if r.exc_info] == []
    assert any("timeout graceful shutdown exceeded" in r.getMessage() for r in records)


# --- security -------------------------------------------------------------------------------


def test_the_api_key_and_the_security_headers(server, reference):
    routes = [("GET", "/v1/models/xception"), ("GET", "/v2/models/xception"),
              ("GET", "/metrics"), ("POST", "/v2/models/xception/infer"),
              ("POST", "/v1/models/xception:classify")]
    for method, path in routes:
        for headers in ({}, {"Authorization": "Bearer wrong-key"},
                        {"Authorization": KEY}, {"Authorization": f"Basic {KEY}"}):
            status, head, body = server.call(method, path, b"{}" if method == "POST"
                                             else None, headers, auth=False)
            assert_error(status, body, 401, "Authorization: Bearer")
            assert head["www-authenticate"].startswith("Bearer")
    # Health and the page need no key; the page comes with a strict policy.
    status, headers, body = server.call("GET", "/", auth=False)
    assert status == 200 and b"<html" in body
    policy = headers["content-security-policy"]
    assert "default-src 'none'" in policy and "script-src 'self'" in policy
    assert "unsafe-inline" not in policy and "http" not in policy
    assert headers["x-content-type-options"] == "nosniff"
    # The template's own path sends a browser to the page, whose links are
    # relative to `/`.
    status, headers, _ = server.call("GET", "/page/index.html", auth=False)
    assert (status, headers["location"]) == (308, "../")
    for link in re.findall(rb'(?:href|src)="(page/[^"]+)"', body):
        assert server.call("GET", "/" + link.decode(), auth=False)[0] == 200, link


def test_metrics_count_requests_batches_and_the_queue(server, reference):
    server.call("POST", "/v1/models/xception:classify", reference["files"][0])
    text = server.call("GET", "/metrics")[2].decode()
    assert 'keras_xception_requests_total{route="classify",status="200"}' in text
    assert "keras_xception_request_duration_seconds_bucket" in text
    assert "keras_xception_batch_size_bucket" in text
    assert "keras_xception_queue_images 0.0" in text


# --- a real process -------------------------------------------------------------------------


@pytest.mark.slow
def test_sigterm_drains_a_request_in_flight_and_a_second_one_exits_at_once(kitchen_file, reference):
    env = {k: v for k, v in os.environ.items() if k != "KERAS_XCEPTION_API_KEY"}
    process = subprocess.Popen(
        [sys.executable, "-m", "keras_xception.cli", "serve", "--model", str(kitchen_file),
         "--port", "0", "--precision", "float32", "--batch-wait-ms", "3000",
         "--name", "kitchen", "--grace-period", "600"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        lines = []
        for line in process.stderr:
            lines.append(line)
            match = re.fullmatch(r"serving kitchen on http://127\.0\.0\.1:(\d+)\n", line)
            if match:
                break
        assert match, "".join(lines)
        port = int(match.group(1))
        url = f"http://127.0.0.1:{port}"

        def classify():
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            conn.request("POST", "/v1/models/kitchen:classify", reference["files"][0])
            response = conn.getresponse()
            return response.status, json.loads(response.read())

        # A request whose body never ends: only a second signal ends its wait.
        stalled = socket.create_connection(("127.0.0.1", port), timeout=60)
        stalled.sendall(b"POST /v1/models/kitchen:predict HTTP/1.1\r\nHost: x\r\n"
                        b"Content-Length: 100\r\n\r\n{")
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            answer = pool.submit(classify)
            # The batch waits 3 s for more images: the request is in the queue.
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                conn.request("GET", "/metrics")
                if "keras_xception_queue_images 1.0" in conn.getresponse().read().decode():
                    break
                time.sleep(0.02)
            else:
                pytest.fail(f"the request never reached {url}'s queue")
            process.send_signal(signal.SIGTERM)
            status, body = answer.result(60)
        assert status == 200, body
        assert body["predictions"][0]["class_index"] == int(np.argmax(reference["decoded"][0]))
        # Still waiting (--grace-period 600) for the stalled body: a Ctrl-C
        # ends the wait, and the stalled request is answered 503.
        assert process.poll() is None
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=60)
        assert stalled.recv(4096).startswith(b"HTTP/1.1 503")
        stalled.close()
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, "".join(lines) + err
    assert out == ""  # Everything, the access log included, went to stderr.
    after = err.splitlines()
    assert any(line.startswith("stopping: finishing the requests in flight")
               for line in after), err
    assert any('"POST /v1/models/kitchen:classify HTTP/1.1" 200' in line for line in after)
    assert "Traceback" not in err


def test_sigterm_exits_even_when_the_stopping_line_cannot_be_written():
    """`serve` whose stderr pipe nobody reads any more: the `stopping: ...` print
    raises BrokenPipeError, which must not keep the server from exiting."""
    import uvicorn

    from keras_xception.serve import local

    def stopping():
        raise BrokenPipeError(32, "Broken pipe")

    server = local._server_class()(uvicorn.Config(None))
    server.on_stop = stopping
    forced = []
    server.on_force = lambda: forced.append(True)
    server.handle_exit(signal.SIGTERM, None)
    assert server.should_exit and not server.force_exit
    # GNU timeout sends SIGTERM to the process and again to its group: still
    # the drain. A second Ctrl-C ends it at once.
    server.handle_exit(signal.SIGTERM, None)
    assert not server.force_exit and not forced
    server.handle_exit(signal.SIGINT, None)
    assert server.force_exit and forced


# --- the command's checks, before any work ------------------------------------------------


def test_serve_without_its_extra_is_one_line(run_cli, monkeypatch):
    from keras_xception import checks

    monkeypatch.setitem(checks.EXTRAS, "serve", ("fastapi", "no_such_module_here"))
    status, out, err = run_cli("serve", "--port", "0")
    assert status == 1 and out == ""
    assert err == ("error: keras-xception serve needs no_such_module_here, which is not "
                   "installed: pip install 'keras-xception[serve]'\n")


def test_serve_option_errors_are_one_line_before_the_model(run_cli, tmp_path):
    import socket

    empty = tmp_path / "key.txt"
    empty.write_text("\n")
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    missing = tmp_path / "missing.keras"  # Never opened: the checks come first.
    try:
        cases = [
            (["--engine", "ray", "--address", "nowhere"], "--address must be"),
            (["--replicas", "2"], "--replicas is for --engine ray"),
            (["--api-key-file", empty], "is empty"),
            (["--api-key-file", tmp_path / "nope.txt"], "cannot read --api-key-file"),
            (["--name", "a/b"], "name"),
            (["--max-batch-size", "64"], "argument --max-batch-size: must be an integer "
                                         "from 1 to 32. Received: '64'"),
            (["--port", str(port)], f"cannot listen on 127.0.0.1:{port}"),
            (["--port", "70000"], "port number"),
            (["--max-body-mb", "0"], "must be a finite number above 0. Received: '0'"),
            (["--max-body-mb", "inf"], "must be a finite number above 0. Received: 'inf'"),
            (["--grace-period", "inf"], "must be a finite number of 0 or more"),
        ]
        for args, words in cases:
            status, out, err = run_cli("serve", "--model", missing, *args)
            assert status == 1 and out == "", (args, err)
            assert err.startswith("error: ") and err.count("\n") == 1, (args, err)
            assert words in err, (args, err)
        # Only once every option passes is the model opened.
        status, _, err = run_cli("serve", "--model", missing, "--port", "0")
        assert status == 1 and "Model file not found" in err
    finally:
        taken.close()
