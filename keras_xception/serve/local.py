"""`keras-xception serve --engine local`: the app under uvicorn, in this process.

    run(source, settings, host="127.0.0.1", port=8501, on_ready=print_line)

In order: the address is bound (not yet listening, so a client is refused
rather than left waiting while the model loads), the model is loaded and its
fast predictor built, one warm-up batch runs, and only then does the socket
listen and `on_ready(url)` run (the command prints its one line there).

SIGTERM and Ctrl-C: uvicorn stops accepting, lets the requests in flight
finish for up to `grace_s` seconds, then the app's lifespan runs what is
still queued and stops the batcher. `run` then returns normally. (uvicorn's
own `Server.capture_signals` re-raises the signal it caught once it has
shut down, so the process would die of it, status -15; `_Server` keeps the
signal handled.) A second Ctrl-C skips the wait.

Everything uvicorn logs goes to stderr: warnings, errors and one access-log
line per request (uvicorn's default sends the access log to stdout).

Ray Serve (`--engine ray`) has the same entry point in `ray_serve.run`.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import sys
import threading

from keras_xception.errors import ConfigError

ACCESS_FORMAT = '%(client_addr)s - "%(request_line)s" %(status_code)s'

LOG_CONFIG = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "plain": {"format": "%(message)s"},
        "access": {"()": "uvicorn.logging.AccessFormatter", "fmt": ACCESS_FORMAT,
                   "use_colors": False},
    },
    "handlers": {
        "stderr": {"class": "logging.StreamHandler", "formatter": "plain",
                   "stream": "ext://sys.stderr"},
        "access": {"class": "logging.StreamHandler", "formatter": "access",
                   "stream": "ext://sys.stderr"},
    },
    "loggers": {
        "uvicorn": {"handlers": ["stderr"], "level": "WARNING", "propagate": False},
        "uvicorn.error": {"level": "WARNING"},
        "uvicorn.access": {"handlers": ["access"], "level": "INFO", "propagate": False},
        "keras_xception.serve": {"handlers": ["stderr"], "level": "INFO",
                                 "propagate": False},
    },
}


def url(host: str, port: int) -> str:
    """`http://HOST:PORT`, with an IPv6 host in brackets."""
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}"


def is_loopback(host: str) -> bool:
    """Whether `host` names this machine only (127.0.0.0/8, ::1, localhost)."""
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def bind(host: str, port: int) -> socket.socket:
    """A TCP socket bound to `host:port` (not yet listening).

    Raises:
        ConfigError: One line, if the address cannot be used (taken, not
            this machine's, not an address).
    """
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError) as err:
        raise ConfigError(f"--host {host!r} is not an address this machine can listen "
                          f"on: {err}") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as err:
        sock.close()
        raise ConfigError(f"cannot listen on {url(host, port)[7:]}: "
                          f"{err.strerror or err}") from None
    sock.set_inheritable(True)
    return sock


def _server_class():
    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn's server, with the signal kept handled and a ready callback."""

        on_ready = None
        on_stop = None
        on_force = None

        @contextlib.contextmanager
        def capture_signals(self):
            if threading.current_thread() is not threading.main_thread():
                yield
                return
            handled = (signal.SIGINT, signal.SIGTERM)
            previous = {sig: signal.signal(sig, self.handle_exit) for sig in handled}
            try:
                yield
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)

        def handle_exit(self, sig, frame):
            first = not self.should_exit
            # First: nothing below may stop the exit. uvicorn forces the exit
            # on a second Ctrl-C only: GNU timeout, among others, sends one
            # SIGTERM twice (to the process, then to its group).
            super().handle_exit(sig, frame)
            if self.force_exit and self.on_force is not None:
                self.on_force()
            if first and self.on_stop is not None:
                # A diagnostic only: stderr may be a pipe nobody reads any more.
                with contextlib.suppress(Exception):
                    self.on_stop()

        async def startup(self, sockets=None):
            await super().startup(sockets=sockets)
            if self.started and self.on_ready is not None:
                self.on_ready()

    return Server


def run(source, settings, *, host="127.0.0.1", port=8501, precision="auto",
        max_pixels=None, grace_s=20.0, on_ready=None, on_stop=None, sock=None,
        service=None) -> None:
    """Serves `source` until SIGTERM or Ctrl-C; see the module docstring.

    Args:
        source: The checked `Source` (`service.open_model`).
        settings: The `service.Settings`.
        host, port: Where to listen (`port` 0: a free port).
        precision: Passed to `optimize_for_inference`.
        max_pixels: The pixel limit for decoding, or `None`.
        grace_s: How long requests in flight may take to finish at shutdown.
        on_ready: `on_ready(url)`, once the server listens, after the warm-up.
        on_stop: `on_stop()`, when the first SIGTERM or Ctrl-C arrives.
        sock: An already bound socket to use instead of `host:port`.
        service: A ready `Service` to use instead of building one.

    Raises:
        ConfigError: If the address cannot be bound.
    """
    import uvicorn

    from keras_xception.serve.app import build_app
    from keras_xception.serve.service import Service

    if sock is None:
        sock = bind(host, port)
    with sock:
        if service is None:
            service = Service(source, precision=precision, max_pixels=max_pixels)
            service.warm_up(settings.max_batch_size)
        app = build_app(service, settings)
        config = uvicorn.Config(app, log_config=LOG_CONFIG, lifespan="on",
                                timeout_graceful_shutdown=grace_s, server_header=False,
                                date_header=True)
        server = _server_class()(config)
        address = url(host, sock.getsockname()[1])
        if on_ready is not None:
            server.on_ready = lambda: on_ready(address)
        server.on_stop = on_stop
        server.on_force = lambda: setattr(app.state, "forced_exit", True)
        server.run(sockets=[sock])
    sys.stderr.flush()
