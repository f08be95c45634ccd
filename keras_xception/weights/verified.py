"""A record of each cached file's digests, so a file is hashed once per content.

Hashing a 90 MB weights file takes a noticeable fraction of a second, and
`Xception(weights="imagenet")` checks the file every time it is built. The
md5 and sha256 of a cached file are therefore written, once, to a small JSON
file beside it, `.<name>.verified`, together with the file's size, inode,
modification time and status-change time (`mtime_ns`, `ctime_ns`). While
these are unchanged the recorded digests are used; any rewrite, copy, `touch`
or replacement of the file changes them, and the file is hashed again.

The record is written atomically (`keras_xception.fileio`). In a read-only
cache it cannot be written and the digests are kept for the life of the
process instead.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib

from keras_xception import fileio
from keras_xception.weights import integrity

ALGORITHMS = ("md5", "sha256")
_SUFFIX = ".verified"
_memo: dict[str, tuple[tuple[int, ...], dict[str, str]]] = {}


def record_path(path: str | os.PathLike) -> pathlib.Path:
    """The record of `path`: `.<name>.verified` in the same folder."""
    path = pathlib.Path(path)
    return path.with_name(f".{path.name}{_SUFFIX}")


def _identity(path) -> tuple[int, ...]:
    st = os.stat(path)
    return (st.st_size, st.st_ino, st.st_mtime_ns, st.st_ctime_ns)


def _read(path: pathlib.Path, identity: tuple[int, ...]) -> dict[str, str] | None:
    try:
        record = json.loads(record_path(path).read_text(encoding="utf-8"))
        stored = tuple(record[k] for k in ("size", "inode", "mtime_ns", "ctime_ns"))
        digests = {a: str(record[a]) for a in ALGORITHMS}
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return digests if stored == identity else None


def remember(path: str | os.PathLike, digests: dict[str, str]) -> None:
    """Records the digests of `path`'s current content.

    Args:
        path: The file, already at its final path.
        digests: Hex digests by algorithm name; must hold every one of
            `ALGORITHMS`.
    """
    path = pathlib.Path(path)
    identity = _identity(path)
    _memo[str(path)] = (identity, dict(digests))
    record = dict(zip(("size", "inode", "mtime_ns", "ctime_ns"), identity))
    record.update({a: digests[a] for a in ALGORITHMS})
    with contextlib.suppress(OSError):  # A read-only cache: the memo remains.
        fileio.write_text(record_path(path), json.dumps(record, indent=1) + "\n")


def forget(path: str | os.PathLike) -> None:
    """Drops the record of `path` (before it is moved or deleted)."""
    _memo.pop(str(pathlib.Path(path)), None)
    with contextlib.suppress(OSError):
        record_path(path).unlink()


def digests(path: str | os.PathLike) -> dict[str, str]:
    """The md5 and sha256 of `path`, read from its record when it is current.

    Args:
        path: A cached file.

    Returns:
        `{"md5": ..., "sha256": ...}` hex digests.
    """
    path = pathlib.Path(path)
    identity = _identity(path)
    memo = _memo.get(str(path))
    if memo is not None and memo[0] == identity:
        return dict(memo[1])
    stored = _read(path, identity)
    if stored is not None:
        _memo[str(path)] = (identity, stored)
        return dict(stored)
    computed = integrity.file_digests(path, ALGORITHMS)
    if _identity(path) == identity:  # Not changed while it was being read.
        remember(path, computed)
    return computed


def mismatch(path: str | os.PathLike, file_hash: str) -> tuple[str, str] | None:
    """`(algorithm, received digest)` when `path` does not match, else `None`.

    Like `integrity.hash_mismatch`, but reads the file only when its record
    is missing or out of date.
    """
    algorithm = integrity.hash_algorithm(file_hash)
    received = digests(path)[algorithm]
    return None if received == file_hash.lower() else (algorithm, received)
