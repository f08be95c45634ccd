"""One URL streamed into a partial file: resumed, retried, and watched for stalls.

`Transfer` writes the bytes of a URL to the partial file `.<name>.part` beside
its cache entry (`Part`), and what the server said about them (URL, `ETag`,
`Last-Modified`, length) to `.<name>.part.json`. Both names are fixed, so a
download cut short, even by a killed process, is resumed by the next call
with a `Range` request; `If-Range` carries the validator, so a server whose
file has changed sends the whole new file instead.

A host that cannot be resolved, refuses the connection or cannot be routed
to is not retried (`Unreachable`): that is a machine without network access.
Connection errors after a connection was made, timeouts, HTTP 5xx and 429
are retried with backoff; a cut after some bytes arrived resumes at once, a
bounded number of times; a body slower than `_MIN_RATE` bytes per second over
a window of `_WINDOW_TIMEOUTS` timeouts is given up.

The time is read, and backoff waited, through `CLOCK` (a `Clock`), so tests
can replace it and never wait for a backoff or measure elapsed time.

HTTP is the standard library's `urllib.request`; `weights/HTTP.md` says why.
"""

from __future__ import annotations

import contextlib
import email.utils
import errno
import hashlib
import http.client
import json
import os
import pathlib
import re
import shutil
import socket
import time
import urllib.error
import urllib.parse
import urllib.request

from keras_xception import fileio
from keras_xception.errors import WeightsError
from keras_xception.weights import integrity, urls, verified

DEFAULT_TIMEOUT = 30
DEFAULT_RETRIES = 3

_CHUNK = 1 << 16
_FIRST_DELAY = 0.5  # Seconds before the first retry; doubles each retry.
_MAX_DELAY = 30.0
_USER_AGENT = "keras-xception (Python urllib)"
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")
_RESUMES_PER_TRY = 10  # Resumes allowed per call: this times (retries + 1).
_MIN_RATE = 1000  # Bytes per second a body must average over each window.
_WINDOW_TIMEOUTS = 10  # The window is this many timeouts long.
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
_NO_ROUTE = (errno.ENETUNREACH, errno.EHOSTUNREACH, errno.ENETDOWN)


class Clock:
    """Where a transfer reads the time and waits out a backoff.

    `CLOCK`, an instance, is what every transfer uses; tests replace it with
    a clock of their own, so that nothing waits for a backoff and no test
    measures elapsed time.
    """

    def now(self) -> float:
        """Seconds on a monotonic clock."""
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        """Waits `seconds` (a backoff before a retry)."""
        time.sleep(seconds)


CLOCK = Clock()


class _Incomplete(Exception):
    """The server closed the connection before the whole body arrived."""


class _Changed(Exception):
    """The server's file is not the one the partial download holds."""


class NetworkError(WeightsError):
    """The network failed; a partial file is kept for the next attempt."""


class Unreachable(NetworkError):
    """No connection could be made to the host at all (not retried)."""

    def __init__(self, url: str, reason: str, ways_out: str):
        self.url = url
        self.reason = reason
        host = urllib.parse.urlsplit(url).hostname
        super().__init__(f"Could not download {url}: {host} {reason}. {ways_out}")


def _unreachable(err: BaseException) -> str | None:
    """Why no connection could be made at all, or `None` for other failures."""
    if isinstance(err, urllib.error.URLError) and not isinstance(
        err, urllib.error.HTTPError
    ):
        err = err.reason
    if isinstance(err, socket.gaierror):
        return f"cannot be resolved, no network or no DNS: {err.strerror or err}"
    if isinstance(err, ConnectionRefusedError):
        return "refused the connection: no server listens there"
    if isinstance(err, OSError) and err.errno in _NO_ROUTE:
        return f"cannot be reached: {os.strerror(err.errno)}"
    return None


def _timed_out(err: BaseException) -> bool:
    """Whether a transfer failed because no data came for `timeout` seconds."""
    if isinstance(err, urllib.error.URLError) and not isinstance(
        err, urllib.error.HTTPError
    ):
        err = err.reason
    return isinstance(err, TimeoutError)


def _reason(err: BaseException, timeout: float) -> str:
    """Why a transfer failed, in words."""
    if isinstance(err, urllib.error.URLError) and not isinstance(
        err, urllib.error.HTTPError
    ):
        err = err.reason if isinstance(err.reason, BaseException) else err
    if isinstance(err, TimeoutError):
        return f"no data for {timeout:g} s (timed out)"
    if isinstance(err, (_Incomplete, _Changed)):
        return str(err)
    if isinstance(err, (http.client.IncompleteRead, http.client.RemoteDisconnected)):
        return "the connection was cut"
    if isinstance(err, ConnectionResetError):
        return "the connection was reset"
    return f"{type(err).__name__}: {err}" if str(err) else type(err).__name__


def _retry_after(headers) -> float:
    """Seconds a 429/503 response asks to wait (`Retry-After`), else 0."""
    value = (headers or {}).get("Retry-After", "")
    if value.strip().isdigit():
        return float(value)
    with contextlib.suppress(TypeError, ValueError):
        moment = email.utils.parsedate_to_datetime(value)
        return max(0.0, moment.timestamp() - time.time())
    return 0.0


def _status_error(url, err: urllib.error.HTTPError, target) -> WeightsError:
    status = f"HTTP {err.code} {err.reason}"
    if err.code == 404:
        advice = "There is no file at this URL; check the URL (and the mirror, if one is set)."
    elif err.code in (401, 403):
        advice = (
            "The server refused access. If a proxy or a login stands in the way, "
            f"download the file in a browser and copy it to {target}."
        )
    else:
        advice = f"Download the file by other means and copy it to {target}."
    return WeightsError(f"Could not download {url}: the server answered {status}. {advice}")


def html_error(url: str, target: pathlib.Path) -> WeightsError:
    return WeightsError(
        f"Could not download {url}: an HTML page came back instead of the weights "
        "file (a login or proxy page, most likely). Open the URL in a browser to "
        f"see it; download the file there and copy it to {target}, or set "
        f"{urls.MIRROR_ENV} to a mirror you can reach."
    )


class Part:
    """The partial download of `target` and what the server said about it."""

    def __init__(self, target: pathlib.Path):
        self.target = target
        self.path = target.with_name(f".{target.name}.part")
        self.meta_path = target.with_name(f".{target.name}.part.json")

    def meta(self) -> dict:
        try:
            meta = json.loads(self.meta_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return meta if isinstance(meta, dict) else {}

    def resumable(self, url: str) -> tuple[int, dict]:
        """Bytes of a partial download of `url` that can be resumed, and its meta.

        Only a partial file whose response carried a validator (`ETag` or
        `Last-Modified`) is resumed across calls: `If-Range` then lets the
        server say whether its file is still the same.
        """
        meta = self.meta()
        if meta.get("url") != url or not meta.get("validator"):
            return 0, {}
        try:
            size = self.path.stat().st_size
        except OSError:
            return 0, {}
        length = meta.get("length")
        if isinstance(length, int) and size > length:
            return 0, {}
        return size, meta

    def save_meta(self, url: str, response, total: int | None) -> dict:
        etag = response.headers.get("ETag", "")
        modified = response.headers.get("Last-Modified", "")
        # `If-Range` takes a strong ETag or a date; a weak ETag cannot be used.
        validator = etag if etag and not etag.startswith("W/") else modified
        meta = {"url": url, "etag": etag, "last_modified": modified,
                "validator": validator, "length": total}
        fileio.write_text(self.meta_path, json.dumps(meta, indent=1) + "\n")
        return meta

    def discard(self) -> None:
        for path in (self.path, self.meta_path):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()


def _request(url: str, offset: int, validator: str) -> urllib.request.Request:
    headers = {"User-Agent": _USER_AGENT, "Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
        if validator:
            headers["If-Range"] = validator
    return urllib.request.Request(url, headers=headers)


class Transfer:
    """One URL streamed into a `Part`, resuming after cuts.

    Attributes:
        written: Bytes in the partial file.
        total: The file's size, when the server said.
        resumed: Whether bytes from an earlier response (or an earlier call)
            were kept.
    """

    def __init__(self, url, part: Part, *, timeout, retries, progress, ways_out,
                 clock: Clock | None = None):
        self.url = url
        self.clock = CLOCK if clock is None else clock
        self.part = part
        self.timeout = timeout
        self.retries = retries
        self.progress = progress
        self.ways_out = ways_out
        self.written, self.meta = part.resumable(url)
        self.total = self.meta.get("length") if self.written else None
        self.resumed = bool(self.written)
        self.hashers = {}

    def _restart(self, out) -> None:
        out.seek(0)
        out.truncate()
        self.written = 0
        self.resumed = False
        self.hashers = {a: hashlib.new(a) for a in verified.ALGORITHMS}

    def _hash_existing(self, out) -> None:
        """Hashes the bytes already in the partial file."""
        self.hashers = {a: hashlib.new(a) for a in verified.ALGORITHMS}
        out.seek(0)
        for chunk in iter(lambda: out.read(_CHUNK), b""):
            for hasher in self.hashers.values():
                hasher.update(chunk)
        out.seek(self.written)

    def run(self) -> dict[str, str]:
        """Downloads the rest of the file; returns its md5 and sha256."""
        mode = "r+b" if self.written else "w+b"
        with open(self.part.path, mode) as out:
            if self.written:
                out.truncate(self.written)
                self._hash_existing(out)
                self.progress.message(
                    f"Resuming {self.url} at byte {self.written:,} from {self.part.path}"
                )
                self.progress.start(self.total)
            else:
                self._restart(out)
            if not (self.written and self.written == self.total):
                self._loop(out)
            out.flush()
            os.fsync(out.fileno())
        return {a: h.hexdigest() for a, h in self.hashers.items()}

    def _received(self) -> str:
        """How much of the file is on disk, in words."""
        of = f" of {self.total:,}" if self.total else ""
        return f"{self.written:,}{of} bytes received and kept"

    def _give_up(self, text: str) -> NetworkError:
        return NetworkError(
            f"Could not download {self.url}: {text}. Check the network connection "
            "and the proxy settings (HTTPS_PROXY, HTTP_PROXY, NO_PROXY) and try "
            "again later (the download resumes where it stopped), or download the "
            f"file on another machine and copy it to {self.part.target}."
        )

    def _loop(self, out) -> None:
        opener = urllib.request.build_opener()  # Proxies from the environment.
        failures = 0
        stalls = 0
        resumes = 0
        delay = _FIRST_DELAY
        while True:
            start = self.written
            wait = 0.0
            stalled = False
            try:
                request = _request(self.url, self.written, self.meta.get("validator", ""))
                with opener.open(request, timeout=self.timeout) as response:
                    self._receive(response, out)
                    return
            except urllib.error.HTTPError as err:
                err.close()
                if err.code == 416 and self.written:  # Our offset is past the end.
                    self._restart(out)
                    reason = "the server refused to resume (HTTP 416)"
                elif err.code >= 500 or err.code == 429:
                    reason = f"the server answered HTTP {err.code} {err.reason}"
                    wait = _retry_after(err.headers)
                else:
                    raise _status_error(self.url, err, self.part.target) from err
            except (OSError, http.client.HTTPException, _Incomplete, _Changed) as err:
                if isinstance(err, OSError) and err.errno in DISK_FULL:
                    raise
                unreachable = _unreachable(err)
                if unreachable is not None:
                    raise Unreachable(self.url, unreachable, self.ways_out) from err
                reason = _reason(err, self.timeout)
                stalled = _timed_out(err)
                if isinstance(err, _Changed):  # Start over at once; it cannot recur.
                    self.progress.message(f"{reason[:1].upper()}{reason[1:]}; "
                                          f"downloading {self.url} from the start.")
                    continue
            if self.written > start and not stalled:
                # A cut after progress resumes at once without using a retry,
                # a bounded number of times.
                resumes += 1
                if resumes > _RESUMES_PER_TRY * (self.retries + 1):
                    raise self._give_up(
                        f"the server keeps cutting the connection: {reason}, "
                        f"{resumes - 1} resumes; {self._received()}"
                    )
                self.progress.message(
                    f"Resuming {self.url} at byte {self.written:,} ({reason})."
                )
                continue
            # Nothing arrived, or the server went silent: a failed attempt.
            failures += 1
            stalls += stalled
            if failures > self.retries:
                attempts = f"{failures} attempt{'s' if failures > 1 else ''}"
                if stalled and stalls > 1:
                    raise self._give_up(
                        f"the server keeps stalling: {reason}, {stalls} times in "
                        f"{attempts}; {self._received()}"
                    )
                kept = f"; {self._received()}" if self.written else ""
                raise self._give_up(f"{reason}, after {attempts}{kept}")
            pause = min(max(delay, wait), _MAX_DELAY)
            self.progress.message(
                f"{reason[:1].upper()}{reason[1:]}; retrying {self.url} in {pause:g} s."
            )
            self.clock.sleep(pause)
            delay *= 2

    def _receive(self, response, out) -> None:
        content_range = _CONTENT_RANGE.fullmatch(response.headers.get("Content-Range", ""))
        length = response.headers.get("Content-Length")
        length = int(length) if length and length.isdigit() else None
        if (
            self.written
            and response.status == 206
            and content_range is not None
            and int(content_range[1]) == self.written
        ):
            whole = content_range[3]
            if whole != "*" and self.total is not None and int(whole) != self.total:
                self._restart(out)
                raise _Changed("the file on the server changed size")
            self.resumed = True
        else:  # A fresh start, a changed file, or a server that ignored Range.
            self._restart(out)
            self.total = length
            self.meta = self.part.save_meta(self.url, response, self.total)
            self.progress.message(f"Downloading {self.url} to {self.part.target}")
            self.progress.start(self.total)
        if self.total is not None:
            self._check_space(self.total - self.written)
        # A fresh body's first bytes are held back until they show it is not
        # an HTML page; `read1` returns what has arrived, so a trickle is seen.
        head = b"" if self.written == 0 else None
        window = _WINDOW_TIMEOUTS * self.timeout
        mark, marked = self.clock.now(), self.written
        for chunk in iter(lambda: response.read1(_CHUNK), b""):
            if head is not None:
                head += chunk
                if len(head) < integrity.HEAD_BYTES:
                    chunk = b""
                else:
                    self._check_head(head, response)
                    chunk, head = head, None
            self._write(out, chunk)
            now = self.clock.now()
            if now - mark >= window:
                arrived = self.written + len(head or b"") - marked
                if arrived < _MIN_RATE * window:
                    raise self._give_up(
                        f"the server is too slow: {arrived:,} bytes in the last "
                        f"{now - mark:.0f} s, less than {_MIN_RATE:,} bytes/s; "
                        f"{self._received()}"
                    )
                mark, marked = now, self.written + len(head or b"")
        if head:  # A body shorter than the held-back head.
            self._check_head(head, response)
            self._write(out, head)
        if self.total is not None and self.written < self.total:
            raise _Incomplete(
                f"the connection closed after {self.written:,} of {self.total:,} bytes"
            )

    def _check_head(self, head: bytes, response) -> None:
        """Refuses an HTML page served in place of the file."""
        if integrity.looks_like_html(head) or (
            response.headers.get_content_type() == "text/html"
            and not head.startswith(integrity.HDF5_SIGNATURE)
        ):
            raise html_error(self.url, self.part.target)

    def _write(self, out, chunk: bytes) -> None:
        if not chunk:
            return
        out.write(chunk)
        for hasher in self.hashers.values():
            hasher.update(chunk)
        self.written += len(chunk)
        self.progress.update(self.written)

    def _check_space(self, needed: int) -> None:
        """Fails now, rather than midway, when the disk cannot hold the rest."""
        try:
            free = shutil.disk_usage(self.part.path.parent).free
        except OSError:
            return
        if free < needed:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self.part.path))


def check_settings(timeout, retries) -> None:
    if (
        isinstance(timeout, bool)
        or not isinstance(timeout, (int, float))
        or timeout <= 0
    ):
        raise WeightsError(
            f"`timeout` must be a positive number of seconds. Received: timeout={timeout!r}"
        )
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise WeightsError(
            f"`retries` must be an integer >= 0. Received: retries={retries!r}"
        )
