"""Downloading weight files into the cache: locked, resumable, verified, atomic.

A download goes to a temporary file beside its final path, under a lock on
that path, and is renamed into place (`os.replace`) only once it is a
complete HDF5 file with the expected digest. A failure at any step deletes the
temporary file, so the final path only ever holds a verified file.

HTTP is the standard library's `urllib.request`: it reads proxies from the
usual environment variables and follows redirects, and everything this module
adds (timeouts, retries with backoff, resuming with `Range`) is a few lines on
top of it; see `weights/HTTP.md`.
"""

from __future__ import annotations

import contextlib
import email.utils
import hashlib
import http.client
import os
import pathlib
import re
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import warnings

import filelock

from keras_xception.errors import WeightsError
from keras_xception.weights import cache, integrity, registry

DEFAULT_TIMEOUT = 30
DEFAULT_RETRIES = 3

_CHUNK = 1 << 16
_FIRST_DELAY = 0.5  # Seconds before the first retry; doubles each retry.
_MAX_DELAY = 30.0
_USER_AGENT = "keras-xception (Python urllib)"
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")


class CachedFileWarning(UserWarning):
    """A cached weights file failed its check and is being downloaded again."""


class _Incomplete(Exception):
    """The server closed the connection before the whole body arrived."""


class _Progress:
    """Keras's progress bar (terminal and notebook), imported only when shown."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self._bar = None
        self._mid_line = False  # A bar is drawn and its line not ended.

    def message(self, text: str) -> None:
        if self.enabled:
            self.end_line()
            print(text, flush=True)

    def start(self, total: int | None) -> None:
        if self.enabled:
            from keras.utils import Progbar

            self.end_line()
            self._bar = Progbar(total)

    def update(self, done: int) -> None:
        if self._bar is not None:
            self._bar.update(done)
            self._mid_line = self._bar.target is None or done < self._bar.target

    def end_line(self) -> None:
        if self._mid_line:
            print(flush=True)
            self._mid_line = False



def is_url(value) -> bool:
    """Whether `value` is an http(s) URL string (rather than a local path)."""
    return isinstance(value, str) and value.startswith(("http://", "https://"))

def _request(url: str, offset: int) -> urllib.request.Request:
    headers = {"User-Agent": _USER_AGENT, "Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    return urllib.request.Request(url, headers=headers)


def _retry_after(headers) -> float:
    """Seconds a 429/503 response asks to wait (`Retry-After`), else 0."""
    value = (headers or {}).get("Retry-After", "")
    if value.strip().isdigit():
        return float(value)
    with contextlib.suppress(TypeError, ValueError):
        moment = email.utils.parsedate_to_datetime(value)
        return max(0.0, moment.timestamp() - time.time())
    return 0.0


def _reason(err: BaseException, timeout: float) -> str:
    """Why a connection failed, in words."""
    if isinstance(err, urllib.error.URLError) and not isinstance(
        err, urllib.error.HTTPError
    ):
        err = err.reason if isinstance(err.reason, BaseException) else err
    if isinstance(err, TimeoutError):
        return f"no data for {timeout:g} s (timed out)"
    if isinstance(err, _Incomplete):
        return str(err)
    if isinstance(err, (http.client.IncompleteRead, http.client.RemoteDisconnected)):
        return "the connection was cut"
    return f"{type(err).__name__}: {err}" if str(err) else type(err).__name__


def _status_error(
    url: str, err: urllib.error.HTTPError, target: pathlib.Path
) -> WeightsError:
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
    return WeightsError(
        f"Could not download {url}: the server answered {status}. {advice}"
    )


def _transfer(url, out, *, algorithm, timeout, retries, progress, target):
    """Streams `url` into the open file `out`, resuming after a cut.

    Returns:
        The hex digest of what was written (`algorithm`), or `None`.
    """
    opener = urllib.request.build_opener()  # Proxies from the environment.
    hasher = hashlib.new(algorithm) if algorithm else None
    written = 0
    failures = 0
    delay = _FIRST_DELAY
    while True:
        start = written
        wait = 0.0
        try:
            with opener.open(_request(url, written), timeout=timeout) as response:
                content_range = _CONTENT_RANGE.fullmatch(
                    response.headers.get("Content-Range", "")
                )
                resumed = (
                    written > 0
                    and response.status == 206
                    and content_range is not None
                    and int(content_range[1]) == written
                )
                if not resumed:  # A fresh start, or a server that ignored Range.
                    out.seek(0)
                    out.truncate()
                    hasher = hashlib.new(algorithm) if algorithm else None
                    written = 0
                length = response.headers.get("Content-Length")
                total = written + int(length) if length and length.isdigit() else None
                if not resumed:
                    progress.start(total)
                for chunk in iter(lambda: response.read(_CHUNK), b""):
                    if written == 0 and (
                        integrity.looks_like_html(chunk)
                        or (
                            response.headers.get_content_type() == "text/html"
                            and not chunk.startswith(integrity.HDF5_SIGNATURE)
                        )
                    ):
                        raise _html_error(url, target)
                    out.write(chunk)
                    if hasher is not None:
                        hasher.update(chunk)
                    written += len(chunk)
                    progress.update(written)
                if total is not None and written < total:
                    raise _Incomplete(
                        f"the connection closed after {written:,} of {total:,} bytes"
                    )
                return hasher.hexdigest() if hasher is not None else None
        except urllib.error.HTTPError as err:
            err.close()
            if err.code == 416 and written:  # Our offset is past the end: start over.
                written = 0
                reason = "the server refused to resume (HTTP 416)"
            elif err.code >= 500 or err.code == 429:
                reason = f"the server answered HTTP {err.code} {err.reason}"
                wait = _retry_after(err.headers)
            else:
                raise _status_error(url, err, target) from err
        except (OSError, http.client.HTTPException, _Incomplete) as err:
            reason = _reason(err, timeout)
        if written > start:
            progress.message(f"Resuming {url} at byte {written:,} ({reason}).")
            continue  # Progress was made: resume at once, without using a retry.
        failures += 1
        if failures > retries:
            raise WeightsError(
                f"Could not download {url}: {reason}, after {failures} attempt"
                f"{'s' if failures > 1 else ''}. Check the network connection and "
                "the proxy settings (HTTPS_PROXY, HTTP_PROXY, NO_PROXY), try again "
                f"later, or download the file on another machine and copy it to "
                f"{target}."
            )
        pause = min(max(delay, wait), _MAX_DELAY)
        progress.message(
            f"{reason[:1].upper()}{reason[1:]}; retrying {url} in {pause:g} s."
        )
        time.sleep(pause)
        delay *= 2


def _html_error(url: str, target: pathlib.Path) -> WeightsError:
    return WeightsError(
        f"Could not download {url}: an HTML page came back instead of the weights "
        "file (a login or proxy page, most likely). Open the URL in a browser to "
        f"see it; download the file there and copy it to {target}, or set "
        f"{cache.MIRROR_ENV} to a mirror you can reach."
    )


def _download_to(url, target: pathlib.Path, *, file_hash, timeout, retries, progress):
    """Downloads `url` and moves it to `target` once it is verified."""
    algorithm = integrity.hash_algorithm(file_hash) if file_hash else None
    progress.message(f"Downloading {url} to {target}")
    fd, part = tempfile.mkstemp(
        dir=target.parent, prefix=f".{target.name}.", suffix=".part"
    )
    try:
        with os.fdopen(fd, "w+b") as out:
            digest = _transfer(
                url,
                out,
                algorithm=algorithm,
                timeout=timeout,
                retries=retries,
                progress=progress,
                target=target,
            )
            out.flush()
            os.fsync(out.fileno())
        problem = integrity.content_problem(part)
        if problem is not None and problem.kind == "html":
            raise _html_error(url, target)
        if problem is not None:
            raise WeightsError(
                f"Could not download {url}: the server sent {problem.what}, not "
                f"the weights file. Check the URL, or download the file by other "
                f"means and copy it to {target}."
            )
        if file_hash and digest != file_hash.lower():
            raise WeightsError(
                f"Could not download {url}: the file's {algorithm} is {digest}, "
                f"expected {file_hash.lower()}. The download was corrupted or the "
                "URL serves another file; nothing was saved. Try again; if it "
                f"fails the same way, download the file by other means, check its "
                f"{algorithm} and copy it to {target}."
            )
        os.replace(part, target)
    finally:
        progress.end_line()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(part)


def _cached_problem(path: pathlib.Path, file_hash: str | None) -> str | None:
    """What is wrong with a cached file, as a phrase after its path, or `None`."""
    problem = integrity.content_problem(path)
    if problem is not None:
        return f"is {problem.what}"
    if file_hash:
        mismatch = integrity.hash_mismatch(path, file_hash)
        if mismatch is not None:
            algorithm, received = mismatch
            return f"has {algorithm} {received}, expected {file_hash.lower()}"
    return None


@contextlib.contextmanager
def _locked(target: pathlib.Path, progress: _Progress):
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


def _obtain(
    fname, urls, *, file_hash, cache_dir, timeout, retries, progress
) -> pathlib.Path:
    """The verified cached `fname`, downloaded from the first URL that works."""
    if file_hash is not None:
        integrity.hash_algorithm(file_hash)  # Reject a malformed digest first.
    folder = cache.download_dir(cache_dir)
    target = folder / fname
    bad = []
    for path in cache.cached_files(fname, cache_dir):
        problem = _cached_problem(path, file_hash)
        if problem is None:
            return path
        bad.append(f"{path} {problem}")
    if cache.offline():
        state = (
            f"the cached copy is unusable: {'; '.join(bad)}"
            if bad
            else f"{fname} is not in the cache"
        )
        raise WeightsError(
            f"{cache.OFFLINE_ENV}=1 forbids downloading, and {state}. Download "
            f"{fname} from {urls[0]} on a machine with network access and copy it "
            f"to {target}, or unset {cache.OFFLINE_ENV}."
        )
    for line in bad:
        if not line.startswith(f"{target} "):
            warnings.warn(f"{line}; it is not used.", CachedFileWarning, stacklevel=3)
    progress = _Progress(progress)
    folder.mkdir(parents=True, exist_ok=True)
    with _locked(target, progress):
        if target.is_file():  # Written while we waited, or the bad copy.
            problem = _cached_problem(target, file_hash)
            if problem is None:
                return target
            warnings.warn(
                f"{target} {problem}; deleting it and downloading it again.",
                CachedFileWarning,
                stacklevel=3,
            )
            target.unlink()
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
                )
                return target
            except WeightsError as err:
                errors.append(err)
    if len(errors) == 1:
        raise errors[0]
    raise WeightsError(
        f"Could not download {fname} from any of its {len(errors)} URLs:\n"
        + "\n".join(f"  - {err}" for err in errors)
    )


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
    given) is returned without touching the network. A cached file that fails
    those checks is never used: a warning says so and it is downloaded again.

    Args:
        url: An `http://` or `https://` URL.
        file_hash: The expected md5 or sha256 hex digest, or `None` to only
            check that the file is complete HDF5.
        cache_dir: Base cache folder; the file goes to its `models`
            subfolder, as with `keras.utils.get_file`. `None` uses
            `$KERAS_HOME/models` or `~/.keras/models`.
        fname: File name in the cache. Defaults to the last part of the
            URL's path.
        timeout: Seconds to wait for a connection or for the next bytes; a
            stalled server counts as a failed attempt.
        retries: How many times to retry after a connection error, an HTTP
            5xx or 429. An attempt cut short after receiving data resumes
            with a `Range` request without using up a retry.
        progress: Whether to show a progress bar.

    Returns:
        The path of the verified file in the cache.

    Raises:
        WeightsError: If the file cannot be downloaded or is not the expected
            one (HTTP error, HTML page, hash mismatch), with what to do; or if
            `KERAS_XCEPTION_OFFLINE=1` and the file is not cached.
    """
    if not is_url(url):
        raise WeightsError(
            f"`url` must be an http:// or https:// URL. Received: url={url!r}"
        )
    if fname is None:
        fname = pathlib.PurePosixPath(
            urllib.parse.unquote(urllib.parse.urlsplit(url).path)
        ).name
        if not fname:
            raise WeightsError(
                f"Cannot tell a file name from the URL; pass `fname`. Received: url={url!r}"
            )
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
    )


def fetch(include_top=True, *, cache_dir=None, progress=True) -> pathlib.Path:
    """The official ImageNet weights file, from the cache or downloaded.

    The file is the one `keras.applications.Xception` uses, in the same
    cache, checked against the digest in `registry.WEIGHTS` every time.
    URLs are tried in the registry's order, or only
    `$KERAS_XCEPTION_WEIGHTS_URL/<file name>` when that mirror is set.

    Args:
        include_top: `True` for the file with the 1000-class classifier,
            `False` for the feature extractor only.
        cache_dir: Base cache folder, as in `download`.
        progress: Whether to show a progress bar.

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
    )
