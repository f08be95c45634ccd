"""A local HTTP server for the downloader tests, with injectable faults.

The server runs the standard library's `http.server` in a thread on
127.0.0.1 and a free port. Each path serves a body; a queue of faults is
consumed one per request before the body is served normally:

    server.add("/w.h5", body, faults=[Status(503), Status(503)])

Faults: `Status(code)`, `Cut(at)` (drop the connection after `at` bytes of the
body), `Stall()` (send nothing) and `Stall(after=n)` (send `n` bytes of the
body, then nothing).

Every request's path and headers are recorded in `server.requests`.

`FakeClock` replaces the downloader's clock (`transfer.CLOCK`): backoffs
return at once and are recorded, and with `Server(clock=...)` a route's
`chunk_delay` moves that clock on instead of sleeping, so a trickle takes the
downloader's time, not the test's.

Each body is served with an `ETag` (its md5) and a `Last-Modified` date, and
honours `Range: bytes=N-` and `If-Range` as a real server does: a validator
that is not the current body's gets the whole body (200). `validators=False`
serves neither header, `honor_if_range=False` ignores `If-Range`.
"""

from __future__ import annotations

import dataclasses
import email.utils
import hashlib
import http.server
import socket
import threading
import time


class FakeClock:
    """A clock for the downloader that moves only when told (`transfer.Clock`).

    `sleep` records each pause in `sleeps` and moves the time on at once. A
    server given the clock moves it by `chunk_delay` after each piece of a
    body, once the downloader has read the time since the last move: the
    time the downloader sees is the time its bytes would have taken, give or
    take one piece, however busy the machine is.
    """

    def __init__(self):
        self.time = 0.0
        self.sleeps: list[float] = []
        self._reads = 0
        self._changed = threading.Condition()

    def now(self) -> float:
        with self._changed:
            self._reads += 1
            self._changed.notify_all()
            return self.time

    def sleep(self, seconds: float) -> None:
        with self._changed:
            self.sleeps.append(seconds)
            self.time += seconds

    def reads(self) -> int:
        with self._changed:
            return self._reads

    def advance_after_read(self, seconds: float, since: int) -> int:
        """Moves on `seconds` once the time was read more than `since` times.

        Waits at most a second, so a downloader that stopped reading does
        not hold the server. Returns the count of reads to pass next.
        """
        with self._changed:
            self._changed.wait_for(lambda: self._reads > since, timeout=1.0)
            self.time += seconds
            return self._reads


@dataclasses.dataclass(frozen=True)
class Status:
    """Answer with this HTTP status and a short body."""

    code: int
    headers: tuple[tuple[str, str], ...] = ()


@dataclasses.dataclass(frozen=True)
class Cut:
    """Send the headers and `at` bytes of the body, then drop the connection."""

    at: int


@dataclasses.dataclass(frozen=True)
class Stall:
    """Accept the request and send nothing until the server stops.

    With `after`, send the headers and `after` bytes of the body first.
    """

    after: int | None = None


@dataclasses.dataclass
class Route:
    body: bytes
    faults: list
    content_type: str = "application/octet-stream"
    honor_range: bool = True
    chunk_delay: float = 0.0
    validators: bool = True
    honor_if_range: bool = True
    modified: float = dataclasses.field(default_factory=time.time)
    chunk_size: int = 1 << 16

    @property
    def etag(self) -> str:
        return '"' + hashlib.md5(self.body).hexdigest() + '"'

    @property
    def last_modified(self) -> str:
        return email.utils.formatdate(self.modified, usegmt=True)


class Server:
    """The running server; use as a context manager or call `close()`."""

    def __init__(self, clock: FakeClock | None = None):
        self.clock = clock
        self.routes: dict[str, Route] = {}
        self.requests: list[tuple[str, dict[str, str]]] = []
        self._release = threading.Event()
        handler = _handler(self)
        self._httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, args=(0.05,), daemon=True
        )
        self._thread.start()

    @property
    def base(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}/"

    def url(self, path: str) -> str:
        return self.base + path.lstrip("/")

    def add(
        self,
        path: str,
        body: bytes,
        *,
        faults=(),
        content_type="application/octet-stream",
        honor_range=True,
        chunk_delay=0.0,
        validators=True,
        honor_if_range=True,
        modified=None,
        chunk_size=1 << 16,
    ) -> str:
        """Serves `body` at `path` after the `faults`; returns the URL.

        The body is written `chunk_size` bytes at a time, with `chunk_delay`
        seconds after each piece (on the server's `FakeClock`, if it has one).
        """
        self.routes["/" + path.lstrip("/")] = Route(
            body,
            list(faults),
            content_type,
            honor_range,
            chunk_delay,
            validators,
            honor_if_range,
            time.time() if modified is None else modified,
            chunk_size,
        )
        return self.url(path)

    def hits(self, path: str) -> list[dict[str, str]]:
        """Headers of each request made for `path`."""
        return [headers for p, headers in self.requests if p == "/" + path.lstrip("/")]

    def close(self) -> None:
        self._release.set()
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _handler(server: Server):
    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            server.requests.append((self.path, dict(self.headers)))
            route = server.routes.get(self.path)
            if route is None:
                return self._status(404)
            fault = route.faults.pop(0) if route.faults else None
            if isinstance(fault, Status):
                return self._status(fault.code, fault.headers)
            if isinstance(fault, Stall) and fault.after is None:
                server._release.wait()
                return None
            start = 0
            wanted = self.headers.get("Range", "")
            if (
                route.honor_range
                and wanted.startswith("bytes=")
                and wanted.endswith("-")
            ):
                start = int(wanted[len("bytes=") : -1])
                condition = self.headers.get("If-Range")
                if (
                    route.honor_if_range
                    and condition is not None
                    and condition not in (route.etag, route.last_modified)
                ):
                    start = 0  # Changed since: the whole new body.
            if start >= len(route.body) and start:
                return self._status(416)
            body = route.body[start:]
            self.send_response(206 if start else 200)
            self.send_header("Content-Type", route.content_type)
            self.send_header("Content-Length", str(len(body)))
            if route.validators:
                self.send_header("ETag", route.etag)
                self.send_header("Last-Modified", route.last_modified)
            if start:
                total = len(route.body)
                self.send_header("Content-Range", f"bytes {start}-{total - 1}/{total}")
            self.end_headers()
            if isinstance(fault, Cut):
                self.wfile.write(body[: fault.at])
                self.wfile.flush()
                self.connection.shutdown(socket.SHUT_RDWR)
                self.close_connection = True
                return None
            if isinstance(fault, Stall):
                self.wfile.write(body[: fault.after])
                self.wfile.flush()
                server._release.wait()
                self.close_connection = True
                return None
            size = route.chunk_size
            clock = server.clock
            seen = clock.reads() if clock is not None else 0
            for i in range(0, len(body), size):
                self.wfile.write(body[i : i + size])
                self.wfile.flush()
                if route.chunk_delay and clock is not None:
                    seen = clock.advance_after_read(route.chunk_delay, seen)
                elif route.chunk_delay:
                    time.sleep(route.chunk_delay)
            return None

        def _status(self, code, headers=()):
            text = f"<html><body>error {code}</body></html>".encode()
            self.send_response(code)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(text)))
            for name, value in headers:
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(text)

        def handle_one_request(self):
            try:
                super().handle_one_request()
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True

    return Handler
