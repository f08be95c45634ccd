"""Downloading weight files into the cache: locked, resumable, verified, atomic.

For a file `<name>` in the cache folder, everything happens under the lock
`<name>.lock`:

- the bytes go to `.<name>.part`, and what the server said about them (URL,
  `ETag`, `Last-Modified`, length) to `.<name>.part.json`. Both names are
  fixed, so a download cut short, even by a killed process, is resumed by the
  next call with a `Range` request. `If-Range` carries the validator, so a
  server whose file has changed sends the whole new file instead, and a
  resumed file that then fails its checks is downloaded once more from the
  start;
- the file becomes `<name>` only once it is a complete HDF5 file with the
  expected digest, through `keras_xception.fileio.publish` (fsync, the
  umask's mode, atomic rename); its md5 and sha256 are recorded beside it
  (`verified`), so it is not hashed again while it is unchanged;
- a network failure keeps the partial file for the next call; anything else
  (a wrong file, an HTML page, a full disk) deletes it.

A host that cannot be resolved, refuses the connection or cannot be routed
to is not retried: that is a machine without network access, and the error
says at once how to do without it. Connection errors after a connection was
made, timeouts, HTTP 5xx and 429 are retried with backoff.

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
import warnings

import filelock

from keras_xception import fileio
from keras_xception.errors import WeightsError
from keras_xception.weights import cache, integrity, registry, verified
from keras_xception.weights.progress import Progress, check as check_progress

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
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
_NO_ROUTE = (errno.ENETUNREACH, errno.EHOSTUNREACH, errno.ENETDOWN)


class CachedFileWarning(UserWarning):
    """A cached weights file failed its check and is being downloaded again."""


class _Incomplete(Exception):
    """The server closed the connection before the whole body arrived."""


class _Changed(Exception):
    """The server's file is not the one the partial download holds."""


class _NetworkError(WeightsError):
    """The network failed; a partial file is kept for the next attempt."""


class _Unreachable(_NetworkError):
    """No connection could be made to the host at all (not retried)."""

    def __init__(self, url: str, reason: str, ways_out: str):
        self.url = url
        self.reason = reason
        host = urllib.parse.urlsplit(url).hostname
        super().__init__(f"Could not download {url}: {host} {reason}. {ways_out}")


_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")


def is_url(value) -> bool:
    """Whether `value` is an http(s) URL string (rather than a local path)."""
    return isinstance(value, str) and value[:8].lower().startswith(
        ("http://", "https://")
    )


def check_url(url: str) -> None:
    """Refuses a `scheme://` string that is not a usable http(s) URL.

    Args:
        url: A string that starts with `scheme://`.

    Raises:
        WeightsError: If the scheme is not http or https, the URL cannot be
            parsed (a bad IPv6 address, a port that is not a number), or it
            names no host.
    """
    if not is_url(url):
        scheme = url.split("://", 1)[0]
        raise WeightsError(
            f"Only http:// and https:// URLs can be downloaded, not {scheme}://. "
            f"Download the file by other means and pass its path. Received: {url!r}"
        )
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # Raises for a port that is not a number in 0-65535.
    except ValueError as err:
        raise WeightsError(f"{url!r} is not a valid URL: {err}.") from err
    if not parts.hostname:
        raise WeightsError(
            f"{url!r} is not a valid URL: it names no host. Use "
            f"http://HOST/PATH or https://HOST/PATH."
        )


def looks_like_url(value) -> bool:
    """Whether `value` is a string that starts with `scheme://`."""
    return isinstance(value, str) and _SCHEME.match(value) is not None


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _ways_out(fname: str, target: pathlib.Path, *, official: bool) -> str:
    """The ways to do without this download, for a machine without network."""
    mirror = f"set {cache.MIRROR_ENV} to a mirror you can reach, " if official else ""
    return (
        f"Without network access: use a local file (--weights PATH on the command "
        f"line, weights=PATH in Python), {mirror}or copy {fname} to {target} and "
        f"set {cache.OFFLINE_ENV}=1 to never use the network."
    )


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


def _html_error(url: str, target: pathlib.Path) -> WeightsError:
    return WeightsError(
        f"Could not download {url}: an HTML page came back instead of the weights "
        "file (a login or proxy page, most likely). Open the URL in a browser to "
        f"see it; download the file there and copy it to {target}, or set "
        f"{cache.MIRROR_ENV} to a mirror you can reach."
    )


def _disk_full(target: pathlib.Path, needed: int | None) -> WeightsError:
    need = f"{needed:,} bytes" if needed else "more space"
    try:
        free = f"{shutil.disk_usage(target.parent).free:,} bytes are free"
    except OSError:
        free = "it is full"
    return WeightsError(
        f"Disk full: cannot write {target}: the download needs {need} and {free} "
        f"in {target.parent}. Free some space, or set KERAS_HOME (--cache-dir on "
        "the command line) to a folder on a disk with room."
    )


class _Part:
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


class _Transfer:
    """One URL streamed into a `_Part`, resuming after cuts.

    Attributes:
        written: Bytes in the partial file.
        total: The file's size, when the server said.
        resumed: Whether bytes from an earlier response (or an earlier call)
            were kept.
    """

    def __init__(self, url, part: _Part, *, timeout, retries, progress, ways_out):
        self.url = url
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

    def _give_up(self, text: str) -> _NetworkError:
        return _NetworkError(
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
                if isinstance(err, OSError) and err.errno in _DISK_FULL:
                    raise
                unreachable = _unreachable(err)
                if unreachable is not None:
                    raise _Unreachable(self.url, unreachable, self.ways_out) from err
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
            time.sleep(pause)
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
        mark, marked = time.monotonic(), self.written
        for chunk in iter(lambda: response.read1(_CHUNK), b""):
            if head is not None:
                head += chunk
                if len(head) < integrity.HEAD_BYTES:
                    chunk = b""
                else:
                    self._check_head(head, response)
                    chunk, head = head, None
            self._write(out, chunk)
            now = time.monotonic()
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
            raise _html_error(self.url, self.part.target)

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


def _download_to(url, target: pathlib.Path, *, file_hash, timeout, retries, progress,
                 ways_out) -> None:
    """Downloads `url` and publishes it at `target` once it is verified."""
    algorithm = integrity.hash_algorithm(file_hash) if file_hash else None
    part = _Part(target)
    for attempt in range(2):
        transfer = _Transfer(
            url, part, timeout=timeout, retries=retries, progress=progress,
            ways_out=ways_out,
        )
        try:
            digests = transfer.run()
            problem = integrity.content_problem(part.path)
            if problem is not None and problem.kind == "html":
                raise _html_error(url, target)
            if problem is not None:
                raise WeightsError(
                    f"Could not download {url}: the server sent {problem.what}, not "
                    f"the weights file. Check the URL, or download the file by other "
                    f"means and copy it to {target}."
                )
            if algorithm and digests[algorithm] != file_hash.lower():
                raise WeightsError(
                    f"Could not download {url}: the file's {algorithm} is "
                    f"{digests[algorithm]}, expected {file_hash.lower()}. The download "
                    "was corrupted or the URL serves another file; nothing was saved. "
                    "Try again; if it fails the same way, download the file by other "
                    f"means, check its {algorithm} and copy it to {target}."
                )
            verified.forget(target)
            fileio.publish(part.path, target)
            part.discard()
            verified.remember(target, digests)
            return
        except _NetworkError:
            if transfer.written == 0:
                part.discard()
            raise
        except OSError as err:
            part.discard()
            if err.errno in _DISK_FULL:
                raise _disk_full(target, transfer.total) from err
            raise WeightsError(
                f"Could not write {target}: {err.strerror or err}. Check the cache "
                f"folder {target.parent}, or choose another with KERAS_HOME "
                "(--cache-dir on the command line)."
            ) from err
        except WeightsError:
            part.discard()
            if attempt == 0 and transfer.resumed:
                progress.message(
                    f"The resumed download of {url} failed its check; downloading "
                    "it again from the start."
                )
                continue
            raise
        except BaseException:
            # Interrupted (Ctrl-C, a bug): what arrived stays for the next call.
            if transfer.written == 0:
                part.discard()
            raise
        finally:
            progress.end_line()


def _cached_problem(path: pathlib.Path, file_hash: str | None) -> str | None:
    """What is wrong with a cached file, as a phrase after its path, or `None`."""
    problem = integrity.content_problem(path)
    if problem is not None:
        return f"is {problem.what}"
    if file_hash:
        mismatch = verified.mismatch(path, file_hash)
        if mismatch is not None:
            algorithm, received = mismatch
            return f"has {algorithm} {received}, expected {file_hash.lower()}"
    return None


def _set_aside(target: pathlib.Path, problem: str) -> None:
    """Moves a cached file that failed its check to `<name>.rejected`."""
    rejected = target.with_name(target.name + ".rejected")
    verified.forget(target)
    try:
        os.replace(target, rejected)
    except OSError as err:
        raise WeightsError(
            f"{target} {problem}, and it cannot be moved aside ({err.strerror}). "
            "Delete it and try again."
        ) from err
    warnings.warn(
        f"{target} {problem}; it was moved to {rejected} and is downloaded again.",
        CachedFileWarning,
        stacklevel=4,
    )


@contextlib.contextmanager
def _locked(target: pathlib.Path, progress: Progress):
    lock = filelock.FileLock(f"{target}.lock")
    try:
        lock.acquire(timeout=0)
    except filelock.Timeout:
        progress.message(
            f"Waiting for another process to finish downloading {target.name}"
        )
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


def _make_folder(folder: pathlib.Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise WeightsError(
            f"Cannot create the cache folder {folder}: {err.strerror or err}. "
            "Set KERAS_HOME (--cache-dir on the command line) to a writable folder."
        ) from err


def _check_obstacles(target: pathlib.Path) -> None:
    """Refuses a folder or other non-file where the cache writes `target`.

    The cached file, its lock and its partial download must each be a
    regular file or absent; this is checked before any network traffic.
    """
    part = _Part(target)
    for path in (target, pathlib.Path(f"{target}.lock"), part.path, part.meta_path):
        kind = integrity.not_regular(path)
        if kind is not None:
            raise WeightsError(
                f"{path} is {kind}, where the cache keeps a file for {target.name}; "
                "remove it and try again."
            )


def _combined(fname, errors, ways_out) -> WeightsError:
    if len(errors) == 1:
        return errors[0]
    if all(isinstance(err, _Unreachable) for err in errors):
        hosts = "; ".join(
            f"{urllib.parse.urlsplit(e.url).hostname} {e.reason}" for e in errors
        )
        return WeightsError(
            f"Could not download {fname}: none of its {len(errors)} URLs can be "
            f"reached; {hosts}. {ways_out}"
        )
    return WeightsError(
        f"Could not download {fname} from any of its {len(errors)} URLs: "
        + " ".join(f"({i}) {_one_line(str(err))}" for i, err in enumerate(errors, 1))
    )


def _obtain(
    fname, urls, *, file_hash, cache_dir, timeout, retries, progress, official
) -> pathlib.Path:
    """The verified cached `fname`, downloaded from the first URL that works."""
    if file_hash is not None:
        integrity.hash_algorithm(file_hash)  # Reject a malformed digest first.
    check_progress(progress)
    folder = cache.download_dir(cache_dir)
    target = folder / fname
    bad = []
    for path in cache.cached_files(fname, cache_dir):
        problem = _cached_problem(path, file_hash)
        if problem is None:
            return path
        bad.append((path, problem))
    _check_obstacles(target)
    if cache.offline():
        state = (
            "the cached copy is unusable: "
            + "; ".join(f"{path} {problem}" for path, problem in bad)
            if bad
            else f"{fname} is not in the cache"
        )
        mirror = (
            f"set {cache.MIRROR_ENV} to a mirror you can reach and unset "
            f"{cache.OFFLINE_ENV}, "
            if official
            else ""
        )
        raise WeightsError(
            f"{cache.OFFLINE_ENV}=1 forbids downloading, and {state}. Use a local "
            "file (--weights PATH on the command line, weights=PATH in Python), "
            f"{mirror}or download {fname} from {urls[0]} on a machine with network "
            f"access and copy it to {target}."
        )
    for path, problem in bad:
        if path != target:
            warnings.warn(
                f"{path} {problem}; it is not used.", CachedFileWarning, stacklevel=3
            )
    progress = Progress(progress)
    _make_folder(folder)
    ways_out = _ways_out(fname, target, official=official)
    with _locked(target, progress):
        if target.is_file():  # Written while we waited, or the bad copy.
            problem = _cached_problem(target, file_hash)
            if problem is None:
                return target
            _set_aside(target, problem)
        errors = []
        for url in urls:
            try:
                _download_to(
                    url,
                    target,
                    file_hash=file_hash,
                    timeout=timeout,
                    retries=retries,
                    progress=progress,
                    ways_out=ways_out,
                )
                return target
            except WeightsError as err:
                errors.append(err)
    raise _combined(fname, errors, ways_out)


def _check_settings(timeout, retries) -> None:
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


def download(
    url,
    *,
    file_hash=None,
    cache_dir=None,
    fname=None,
    timeout=DEFAULT_TIMEOUT,
    retries=DEFAULT_RETRIES,
    progress=True,
) -> pathlib.Path:
    """Downloads any weights file into the cache, or finds it there.

    A cached file that is a complete HDF5 file (and matches `file_hash`, when
    given) is returned without touching the network, and without reading it
    again once its digests are recorded (see `verified`). A cached file that
    fails those checks is never used: online, it is moved to
    `<name>.rejected` with a `CachedFileWarning` and downloaded again;
    offline, it is an error.

    Args:
        url: An `http://` or `https://` URL.
        file_hash: The expected md5 or sha256 hex digest, or `None` to only
            check that the file is complete HDF5 (for an official file's URL,
            `None` means its published digest).
        cache_dir: Base cache folder; the file goes to its `models`
            subfolder, as with `keras.utils.get_file`. `None` uses
            `$KERAS_HOME/models` or `~/.keras/models`.
        fname: File name in the cache. Defaults to the official name for an
            official file's URL, else the URL's file name with a key of the
            whole URL in it (`cache.url_fname`), so that two URLs never share
            a cached file.
        timeout: Seconds to wait for a connection or for the next bytes; a
            stalled server counts as a failed attempt.
        retries: How many times to retry after a connection error, an HTTP
            5xx or 429. An attempt cut short after receiving data resumes
            with a `Range` request without using up a retry. A host that
            cannot be resolved, refuses the connection or cannot be routed to
            is not retried.
        progress: `True` shows Keras's progress bar on stdout (as
            `keras.utils.get_file` does), `False` nothing, and a text stream
            such as `sys.stderr` gets the messages and a plain progress
            report instead, so that stdout stays clean.

    Returns:
        The path of the verified file in the cache.

    Raises:
        WeightsError: If the file cannot be downloaded or is not the expected
            one (unreachable host, HTTP error, HTML page, hash mismatch, full
            disk), with what to do; or if `KERAS_XCEPTION_OFFLINE=1` and the
            file is not cached.
    """
    if not is_url(url):
        raise WeightsError(
            f"`url` must be an http:// or https:// URL. Received: url={url!r}"
        )
    check_url(url)
    entry = registry.by_url(url)
    if fname is None:
        fname = entry.fname if entry is not None else cache.url_fname(url)
        if entry is not None and file_hash is None:
            file_hash = entry.file_hash
    if (
        not isinstance(fname, str)
        or fname in ("", ".", "..")
        or "/" in fname
        or os.sep in fname
    ):
        raise WeightsError(
            f"`fname` must be a plain file name. Received: fname={fname!r}"
        )
    _check_settings(timeout, retries)
    return _obtain(
        fname,
        (url,),
        file_hash=file_hash,
        cache_dir=cache_dir,
        timeout=timeout,
        retries=retries,
        progress=progress,
        official=entry is not None,
    )


def fetch(include_top=True, *, cache_dir=None, progress=True) -> pathlib.Path:
    """The official ImageNet weights file, from the cache or downloaded.

    The file is the one `keras.applications.Xception` uses, under its
    official name in the same cache, and is checked against the digest in
    `registry.WEIGHTS`: hashed once, then trusted while its recorded size,
    inode and times are unchanged (see `verified`). A cached copy that fails
    the check is never used: online it is moved to `<name>.rejected` with a
    `CachedFileWarning` and downloaded again; offline it is an error. URLs
    are tried in the registry's order, or only
    `$KERAS_XCEPTION_WEIGHTS_URL/<file name>` when that mirror is set.

    Args:
        include_top: `True` for the file with the 1000-class classifier,
            `False` for the feature extractor only.
        cache_dir: Base cache folder, as in `download`.
        progress: `True`, `False` or a text stream, as in `download`.

    Returns:
        The path of the verified file.

    Raises:
        WeightsError: As `download` does; with `KERAS_XCEPTION_OFFLINE=1`,
            naming the file, where it belongs and where to download it.
    """
    entry = registry.get(include_top)
    mirror = cache.mirror_url(entry.fname)
    return _obtain(
        entry.fname,
        (mirror,) if mirror else entry.urls,
        file_hash=entry.file_hash,
        cache_dir=cache_dir,
        timeout=DEFAULT_TIMEOUT,
        retries=DEFAULT_RETRIES,
        progress=progress,
        official=True,
    )
