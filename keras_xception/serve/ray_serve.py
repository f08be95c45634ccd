"""`keras-xception serve --engine ray`: the same app on Ray Serve.

    run(source, settings, host="127.0.0.1", port=8501, replicas=2, on_ready=print_line)

Each Ray Serve replica (`deployment()`: `@serve.deployment` with
`@serve.ingress`) builds its own `service.Service` from the driver's
`Source` (small and picklable), runs the warm-up batch, and serves the very
app the local engine serves, `app.build_app`, given a `RayBatcher` instead
of `batcher.Batcher`: the replica's images are batched by Ray Serve's
`@serve.batch` (up to `Settings.max_batch_size` per model call, waiting at
most `Settings.batch_wait_ms` after the first), one model call in flight per
replica, on the replica's one model thread, where Grad-CAM also runs.

Load shedding happens twice: in the replica, as locally (at most
`max_queue` images waiting for its model, then 503 with `Retry-After` at
once), and in Ray Serve's router, which gives each replica at most
`max_queue` requests at a time (`max_ongoing_requests`) and keeps at most
`max_queue` more waiting for a replica (`max_queued_requests`); past that,
Ray Serve's proxy answers 503 itself.

Without `address` (nor `RAY_ADDRESS`) Ray starts embedded, on 127.0.0.1
only, as `keras_xception.batch.ray_engine.connected` starts it for batch
jobs, and Ray Serve's HTTP proxy listens on `host:port` of this machine.
With an address the app is deployed on that cluster (whose Serve proxy
address, if Serve already runs there, is the cluster's own). SIGTERM or
Ctrl-C: the app is taken down, each replica finishing its requests for up
to `grace_s` seconds (`graceful_shutdown_timeout_s`); embedded, Ray Serve
and Ray are then shut down, leaving no Ray process behind. A second signal
stops at once.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import signal
import socket
import sys
import threading

import numpy as np

from keras_xception.serve.batcher import Reservation, check_room

# The Ray Serve application's name (one per cluster with this name).
APP_NAME = "keras-xception"


class RayBatcher:
    """What `app.build_app` needs of a batcher, over a `@serve.batch` method.

    Args:
        predict_one: The replica's `@serve.batch` method: one image's
            `(H, W, 3)` pixels in, its output row back.
        max_queue: Images waiting for (or in) the model, at most.
    """

    def __init__(self, predict_one, *, max_queue):
        self._predict_one = predict_one
        self.max_queue = max_queue
        self._reserved = 0  # Images of requests accepted and not yet answered.
        self._stopping = False
        self._model_thread = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="keras_xception-model")

    @property
    def depth(self) -> int:
        """Images waiting for the model, or in it."""
        return self._reserved

    def reserve(self, count: int) -> Reservation:
        """Room for `count` images, or `QueueFull` at once (as `Batcher.reserve`)."""
        check_room(self._reserved, count, self.max_queue, stopping=self._stopping)
        self._reserved += count
        return Reservation(self, count)

    async def submit(self, pixels, reservation: Reservation | None = None) -> np.ndarray:
        """The outputs for `pixels`, each image batched by `@serve.batch`."""
        if reservation is None:
            reservation = self.reserve(len(pixels))
        with reservation:  # Held until answered: depth counts images in the model.
            rows = await asyncio.gather(*(self._predict_one(image) for image in pixels))
        return np.stack(rows)

    async def run_exclusive(self, fn, *args):
        """`fn(*args)` on the model thread, never beside a batch."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._model_thread, fn, *args)

    async def start(self) -> None:
        self._stopping = False

    async def stop(self) -> None:
        self._stopping = True
        self._model_thread.shutdown(wait=True)


_DEPLOYMENT = None


def deployment():
    """The Ray Serve deployment class (made once, on first use: Ray is optional)."""
    global _DEPLOYMENT
    if _DEPLOYMENT is not None:
        return _DEPLOYMENT
    from ray import serve

    from keras_xception.checks import MAX_BATCH_SIZE

    @serve.deployment(name="xception")
    @serve.ingress()  # The app is built per replica, by __serve_build_asgi_app__.
    class XceptionReplica:
        """One replica: a `Service`, a `RayBatcher` over `predict_one`, the app."""

        def __init__(self, source, settings, precision, max_pixels):
            from keras_xception import tfenv
            from keras_xception.serve.service import Service

            tfenv.install()  # This replica's first import of Keras, as the command line's.

            self.settings = settings
            self.service = Service(source, precision=precision, max_pixels=max_pixels)
            self.service.warm_up(settings.max_batch_size)
            self.predict_one.set_max_batch_size(settings.max_batch_size)
            self.predict_one.set_batch_wait_timeout_s(settings.batch_wait_ms / 1000.0)
            self.batcher = RayBatcher(self.predict_one, max_queue=settings.max_queue)

        def __serve_build_asgi_app__(self):
            from keras_xception.serve.app import build_app

            return build_app(self.service, self.settings, batcher=self.batcher)

        # The real sizes are set per replica in __init__, from the settings.
        @serve.batch(max_batch_size=MAX_BATCH_SIZE, batch_wait_timeout_s=0.005)
        async def predict_one(self, images: list) -> list:
            outputs = await self.batcher.run_exclusive(self.service.predict,
                                                       np.stack(images))
            return list(outputs)

    _DEPLOYMENT = XceptionReplica
    return _DEPLOYMENT


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def _stop_signals():
    """An event set by the first SIGTERM or SIGINT; a second one acts as usual."""
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return
    handled = (signal.SIGINT, signal.SIGTERM)
    previous = {sig: signal.getsignal(sig) for sig in handled}

    def first(sig, frame):
        for each in handled:  # The next signal is not caught: it stops at once.
            signal.signal(each, signal.SIG_DFL if each == signal.SIGTERM
                          else signal.default_int_handler)
        stop.set()

    for sig in handled:
        signal.signal(sig, first)
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            # None: a handler not set from Python (Ray's); the default instead.
            signal.signal(sig, signal.SIG_DFL if handler is None else handler)


def run(source, settings, *, host="127.0.0.1", port=8501, precision="auto",
        max_pixels=None, grace_s=20.0, on_ready=None, on_stop=None, address=None,
        replicas=None, stop=None) -> None:
    """Serves `source` on Ray Serve until SIGTERM or Ctrl-C; see the module docstring.

    Args:
        source, settings, host, port, precision, max_pixels, grace_s, on_ready,
            on_stop: As for `keras_xception.serve.local.run` (`port` 0: a free
            port, named to `on_ready`).
        address: The Ray cluster to deploy on (`None`: `RAY_ADDRESS`, else Ray
            embedded on this machine, on 127.0.0.1).
        replicas: Model replicas (`None`: 1).
        stop: A `threading.Event` that stops the server when set, besides the
            signals (for callers on another thread).

    Raises:
        ConfigError: If the cluster cannot be reached.
    """
    from ray import serve

    from keras_xception.batch import ray_engine
    from keras_xception.serve.local import url

    ray_engine.check_address(address)
    embedded = ray_engine.cluster_address(address) is None
    if port == 0:
        port = _free_port(host)
    logging.getLogger("ray.serve").setLevel(logging.WARNING)
    app = deployment().options(
        num_replicas=replicas or 1,
        max_ongoing_requests=settings.max_queue,
        max_queued_requests=settings.max_queue,
        graceful_shutdown_timeout_s=grace_s,
    ).bind(source, settings, precision, max_pixels)
    # The signals are taken after ray.init, which installs a SIGTERM handler
    # of its own (in C++, aborting the process: status -6).
    # Ray's driver prints what its workers report on stdout: stdout stays empty.
    with contextlib.redirect_stdout(sys.stderr), ray_engine.connected(address), \
            _stop_signals() as signalled:
        try:
            serve.start(http_options={"host": host, "port": port},
                        logging_config={"log_level": "WARNING"})
            serve.run(app, name=APP_NAME, route_prefix="/",
                      logging_config={"log_level": "WARNING"})
            if on_ready is not None:
                on_ready(url(host, port))
            while not signalled.wait(0.2):
                if stop is not None and stop.is_set():
                    break
            if on_stop is not None:
                # A diagnostic only: stderr may be a pipe nobody reads any more.
                with contextlib.suppress(Exception):
                    on_stop()
        finally:
            if embedded:
                serve.shutdown()
            else:
                serve.delete(APP_NAME)
