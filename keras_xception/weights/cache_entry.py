"""One file in the cache: found and checked, or downloaded, verified and published.

`download` (any URL) and `fetch` (an official file) return the path of a
verified file `<name>` in the cache folder (`cache`). Everything that writes
there happens under the lock `<name>.lock`:

- a cached file that is a complete HDF5 file with the expected digest is
  returned as is; one that fails is moved to `<name>.rejected` and
  downloaded again (online) or is an error (offline);
- the bytes arrive in the partial file through `transfer.Transfer` (resumed
  across calls), and become `<name>` only once they are a complete HDF5 file
  with the expected digest, through `keras_xception.fileio.publish` (fsync,
  the umask's mode, atomic rename); the md5 and sha256 are recorded beside
  it (`verified`), so it is not hashed again while it is unchanged;
- a network failure keeps the partial file for the next call; anything else
  (a wrong file, an HTML page, a full disk) deletes it.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import shutil
import urllib.parse
import warnings

import filelock

from keras_xception import fileio
from keras_xception.checks import one_line
from keras_xception.errors import WeightsError
from keras_xception.weights import cache, integrity, registry, urls, verified
from keras_xception.weights.progress import Progress, check as check_progress
from keras_xception.weights.transfer import (
    DEFAULT_RETRIES,
    DEFAULT_TIMEOUT,
    DISK_FULL,
    NetworkError,
    Part,
    Transfer,
    Unreachable,
    check_settings,
    html_error,
)

class CachedFileWarning(UserWarning):
    """A cached weights file failed its check and is being downloaded again."""


def _local_file(given: str) -> str:
    """How to use a local file instead, in terms true for every caller.

    `download` and `fetch` are called from Python and from several commands,
    each with its own way (or none) to take a file, so the advice names the
    value the caller gave (`'imagenet'`, the URL), never an option.
    """
    return f"pass the path of a local weights file instead of {given}"


def _ways_out(fname: str, target: pathlib.Path, *, official: bool, given: str) -> str:
    """The ways to do without this download, for a machine without network."""
    mirror = f"set {urls.MIRROR_ENV} to a mirror you can reach, " if official else ""
    return (
        f"Without network access: {_local_file(given)}, {mirror}or copy {fname} "
        f"to {target} and set {cache.OFFLINE_ENV}=1 to never use the network."
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


def _download_to(url, target: pathlib.Path, *, file_hash, timeout, retries, progress,
                 ways_out) -> None:
    """Downloads `url` and publishes it at `target` once it is verified."""
    algorithm = integrity.hash_algorithm(file_hash) if file_hash else None
    part = Part(target)
    for attempt in range(2):
        transfer = Transfer(
            url, part, timeout=timeout, retries=retries, progress=progress,
            ways_out=ways_out,
        )
        try:
            digests = transfer.run()
            problem = integrity.content_problem(part.path)
            if problem is not None and problem.kind == "html":
                raise html_error(url, target)
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
        except NetworkError:
            if transfer.written == 0:
                part.discard()
            raise
        except OSError as err:
            part.discard()
            if err.errno in DISK_FULL:
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


def obstacles(target: pathlib.Path) -> list[tuple[pathlib.Path, str]]:
    """`(path, what it is)` for each folder or other non-file where the
    cache writes `target`: the file, its lock or its partial download."""
    part = Part(target)
    found = []
    for path in (target, pathlib.Path(f"{target}.lock"), part.path, part.meta_path):
        kind = integrity.not_regular(path)
        if kind is not None:
            found.append((path, kind))
    return found


def _check_obstacles(target: pathlib.Path) -> None:
    """Refuses a folder or other non-file where the cache writes `target`.

    The cached file, its lock and its partial download must each be a
    regular file or absent; this is checked before any network traffic.
    """
    found = obstacles(target)
    if found:
        path, kind = found[0]
        raise WeightsError(
            f"{path} is {kind}, where the cache keeps a file for {target.name}; "
            "remove it and try again."
        )


def _combined(fname, errors, ways_out) -> WeightsError:
    if len(errors) == 1:
        return errors[0]
    if all(isinstance(err, Unreachable) for err in errors):
        hosts = "; ".join(
            f"{urllib.parse.urlsplit(e.url).hostname} {e.reason}" for e in errors
        )
        return WeightsError(
            f"Could not download {fname}: none of its {len(errors)} URLs can be "
            f"reached; {hosts}. {ways_out}"
        )
    return WeightsError(
        f"Could not download {fname} from any of its {len(errors)} URLs: "
        + " ".join(f"({i}) {one_line(err, limit=2000)}" for i, err in enumerate(errors, 1))
    )


def _obtain(
    fname, sources, *, file_hash, cache_dir, timeout, retries, progress, official,
    given,
) -> pathlib.Path:
    """The verified cached `fname`, downloaded from the first of `sources` that works.

    `given` names what the caller asked for (`"'imagenet'"`, `"the URL"`), for
    the advice on doing without the network.
    """
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
            f"set {urls.MIRROR_ENV} to a mirror you can reach and unset "
            f"{cache.OFFLINE_ENV}, "
            if official
            else ""
        )
        raise WeightsError(
            f"{cache.OFFLINE_ENV}=1 forbids downloading, and {state}. To go on: "
            f"{_local_file(given)}, {mirror}or download {fname} from {sources[0]} "
            f"on a machine with network access and copy it to {target}."
        )
    for path, problem in bad:
        if path != target:
            warnings.warn(
                f"{path} {problem}; it is not used.", CachedFileWarning, stacklevel=3
            )
    progress = Progress(progress)
    _make_folder(folder)
    ways_out = _ways_out(fname, target, official=official, given=given)
    with _locked(target, progress):
        if target.is_file():  # Written while we waited, or the bad copy.
            problem = _cached_problem(target, file_hash)
            if problem is None:
                return target
            _set_aside(target, problem)
        errors = []
        for url in sources:
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
    if not urls.is_url(url):
        raise WeightsError(
            f"`url` must be an http:// or https:// URL. Received: url={url!r}"
        )
    urls.check_url(url)
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
    check_settings(timeout, retries)
    return _obtain(
        fname,
        (url,),
        file_hash=file_hash,
        cache_dir=cache_dir,
        timeout=timeout,
        retries=retries,
        progress=progress,
        official=entry is not None,
        given="the URL",
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
    mirror = urls.mirror_url(entry.fname)
    return _obtain(
        entry.fname,
        (mirror,) if mirror else entry.urls,
        file_hash=entry.file_hash,
        cache_dir=cache_dir,
        timeout=DEFAULT_TIMEOUT,
        retries=DEFAULT_RETRIES,
        progress=progress,
        official=True,
        given="'imagenet'",
    )
