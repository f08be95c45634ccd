"""Where weight files are cached, and the environment variables that steer it.

The cache is the one `keras.applications` uses, so a user who already has the
official files downloads nothing:

- `<cache_dir>/models` when `cache_dir` is given (as `keras.utils.get_file`
  reads its `cache_dir` argument);
- else `$KERAS_HOME/models`;
- else `~/.keras/models`, or `/tmp/.keras/models` when the home folder is not
  writable.

When that folder is not writable either, files are looked up there first and
then in `/tmp/.keras/models`, where new downloads go, as Keras falls back. A
file where the folder (or one of its parents) should be is an error, not a
reason to fall back.

Official files keep their official names, so the cache is shared with
`keras.applications`. Any other URL is cached under its file name with the
first 12 hex digits of the sha256 of the whole URL inserted before the first
dot (`model.weights.h5` from `https://host/a/model.weights.h5` is cached as
`model-<12 hex>.weights.h5`), so two URLs that end in the same name never
share a file.
"""

from __future__ import annotations

import hashlib
import os
import pathlib
import tempfile
import urllib.parse

from keras_xception.errors import WeightsError

OFFLINE_ENV = "KERAS_XCEPTION_OFFLINE"
SUBDIR = "models"

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"", "0", "false", "no", "off"})


def _tmp_root() -> pathlib.Path:
    return pathlib.Path("/tmp" if os.path.isdir("/tmp") else tempfile.gettempdir())


def _writable(path: pathlib.Path) -> bool:
    """Whether `path` can be written, or created under its nearest parent."""
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate.is_dir() and os.access(candidate, os.W_OK)
    return False


def keras_home() -> pathlib.Path:
    """Keras's home folder: `$KERAS_HOME`, else `~/.keras` (or `/tmp/.keras`)."""
    if "KERAS_HOME" in os.environ:
        return pathlib.Path(os.environ["KERAS_HOME"]).expanduser()
    home = pathlib.Path("~").expanduser()
    if not os.access(home, os.W_OK):
        home = _tmp_root()
    return home / ".keras"


def cache_dirs(cache_dir: str | os.PathLike | None = None) -> tuple[pathlib.Path, ...]:
    """The folders searched for cached files, the one downloads go to last.

    Args:
        cache_dir: Base folder; files live in its `models` subfolder. `None`
            uses Keras's home folder.

    Returns:
        One folder, or two when the first is not writable: then new files
        go to `/tmp/.keras/models`.

    Raises:
        WeightsError: If a file stands where the cache folder or one of its
            parents should be.
    """
    base = pathlib.Path(cache_dir).expanduser() if cache_dir else keras_home()
    primary = base / SUBDIR
    _check_not_blocked(primary, cache_dir)
    if _writable(primary):
        return (primary,)
    fallback = _tmp_root() / ".keras" / SUBDIR
    return (primary,) if fallback == primary else (primary, fallback)


def _check_not_blocked(folder: pathlib.Path, cache_dir) -> None:
    """Refuses a cache folder that cannot exist because a file is in its way."""
    for candidate in (folder, *folder.parents):
        if candidate.exists():
            if candidate.is_dir():
                return
            if cache_dir:
                advice = "Choose another cache_dir (--cache-dir on the command line)"
                received = f"cache_dir={str(folder.parent)!r}"
            elif "KERAS_HOME" in os.environ:
                advice = "Set KERAS_HOME to a folder"
                received = f"KERAS_HOME={os.environ['KERAS_HOME']!r}"
            else:
                advice = "Move the file away, or set KERAS_HOME to a folder"
                received = None
            raise WeightsError(
                f"Cannot use the cache folder {folder}: {candidate} is a file, "
                f"not a folder. {advice}."
                + (f" Received: {received}" if received else "")
            )


def url_fname(url: str) -> str:
    """The cache file name of a URL that is not an official file's.

    The URL's file name with `-<first 12 hex digits of sha256(url)>` inserted
    before its first dot (after a leading one), so every suffix is kept.

    Args:
        url: The full URL, query included.

    Returns:
        A plain file name, e.g. `model-3f2a9c1b7d4e.weights.h5`.
    """
    key = hashlib.sha256(url.encode("utf-8")).hexdigest()[:12]
    name = pathlib.PurePosixPath(urllib.parse.unquote(urllib.parse.urlsplit(url).path)).name
    if name in ("", ".", ".."):
        return f"weights-{key}.h5"
    dot = name.find(".", 1)
    if dot < 0:
        return f"{name}-{key}"
    return f"{name[:dot]}-{key}{name[dot:]}"


def download_dir(cache_dir: str | os.PathLike | None = None) -> pathlib.Path:
    """The folder new downloads are written to (not created here)."""
    return cache_dirs(cache_dir)[-1]


def cached_files(
    fname: str, cache_dir: str | os.PathLike | None = None
) -> list[pathlib.Path]:
    """Existing cached copies of `fname`, in lookup order."""
    return [
        folder / fname for folder in cache_dirs(cache_dir) if (folder / fname).is_file()
    ]


def offline() -> bool:
    """Whether `KERAS_XCEPTION_OFFLINE` forbids network access.

    Raises:
        WeightsError: If the variable holds something other than a yes/no
            value, rather than guessing what was meant.
    """
    value = os.environ.get(OFFLINE_ENV, "").strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise WeightsError(
        f"{OFFLINE_ENV} must be 1 (never use the network) or 0. "
        f"Received: {OFFLINE_ENV}={os.environ[OFFLINE_ENV]!r}"
    )


def contains(path: str | os.PathLike) -> bool:
    """Whether `path` is in one of the cache folders (`cache_dirs()`).

    Only such a file may be deleted on the user's behalf, or advised to be:
    it is the package's copy, and the next use downloads it again. A file
    the user named anywhere else is theirs.
    """
    try:
        folders = {folder.resolve() for folder in cache_dirs()}
        return pathlib.Path(path).expanduser().absolute().parent.resolve() in folders
    except (OSError, ValueError):  # WeightsError is a ValueError.
        return False
