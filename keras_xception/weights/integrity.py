"""Cheap checks of a file's bytes: digests, and whether it is a whole HDF5 file.

`content_problem` reads the first kilobyte and the file size only, so it can
tell an HTML login page, a `.keras` archive or a truncated download apart in
microseconds, before h5py is asked to open anything.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import re
import stat

from keras_xception.errors import WeightsError

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
HEAD_BYTES = 1024
_CHUNK = 1 << 20
_HEX = re.compile(r"[0-9a-f]+")
_ALGORITHMS = {32: "md5", 64: "sha256"}
# Image files people pass where a weights file goes, by their first bytes.
_IMAGES = (
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"\x89PNG\r\n\x1a\n", "a PNG image"),
    (b"GIF87a", "a GIF image"),
    (b"GIF89a", "a GIF image"),
    (b"BM", "a BMP image"),
)


_KINDS = (
    (stat.S_ISDIR, "a folder"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)


def not_regular(path: str | os.PathLike) -> str | None:
    """What `path` is when it exists but is not a regular file, else `None`.

    Only `stat` is asked (following links), so a FIFO or a device is never
    opened.

    Args:
        path: Any path.

    Returns:
        `None` for a regular file or a missing path, else words such as
        `"a folder"` or `"a FIFO"`.
    """
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError):
        return None
    if stat.S_ISREG(mode):
        return None
    return next((words for test, words in _KINDS if test(mode)), "not a regular file")


def check_regular(path: str | os.PathLike) -> None:
    """Refuses a path that exists but is not a regular file, without opening it.

    Raises:
        WeightsError: Naming the path and what it is (a folder, a FIFO, ...).
    """
    kind = not_regular(path)
    if kind == "a folder":
        raise WeightsError(
            f"{path} is a folder; pass the path of an HDF5 weights file "
            "(`.h5` or `.weights.h5`)."
        )
    if kind is not None:
        raise WeightsError(
            f"{path} is not a regular file ({kind}); pass the path of an HDF5 "
            "weights file (`.h5` or `.weights.h5`)."
        )


def hash_algorithm(file_hash: str) -> str:
    """The algorithm of a hex digest: `"md5"` (32 digits) or `"sha256"` (64).

    Raises:
        WeightsError: If `file_hash` is neither.
    """
    digest = file_hash.lower() if isinstance(file_hash, str) else None
    if digest is None or not _HEX.fullmatch(digest) or len(digest) not in _ALGORITHMS:
        raise WeightsError(
            "`file_hash` must be an md5 (32 hex digits) or sha256 (64 hex digits) "
            f"digest. Received: file_hash={file_hash!r}"
        )
    return _ALGORITHMS[len(digest)]


def file_digest(path: str | os.PathLike, algorithm: str) -> str:
    """The hex digest of a file's contents."""
    return file_digests(path, (algorithm,))[algorithm]


def file_digests(path: str | os.PathLike, algorithms) -> dict[str, str]:
    """Hex digests of a file's contents by several algorithms, in one read.

    Args:
        path: The file.
        algorithms: `hashlib` names, e.g. `("md5", "sha256")`.

    Returns:
        A dict from algorithm name to hex digest.
    """
    hashers = {name: hashlib.new(name) for name in algorithms}
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            for hasher in hashers.values():
                hasher.update(chunk)
    return {name: hasher.hexdigest() for name, hasher in hashers.items()}


def hash_mismatch(path: str | os.PathLike, file_hash: str) -> tuple[str, str] | None:
    """`(algorithm, received digest)` when the file does not match, else `None`."""
    algorithm = hash_algorithm(file_hash)
    received = file_digest(path, algorithm)
    return None if received == file_hash.lower() else (algorithm, received)


@dataclasses.dataclass(frozen=True)
class ContentProblem:
    """Why a file is not a complete HDF5 file.

    Attributes:
        kind: `"empty"`, `"html"`, `"image"`, `"zip"`, `"not_hdf5"` or
            `"truncated"`.
        what: A phrase naming what the file is, to follow "the file is" or
            "the server sent", e.g. `"an HTML page, not an HDF5 weights file
            (a login or proxy page, most likely)"`.
    """

    kind: str
    what: str


def looks_like_html(head: bytes) -> bool:
    """Whether the first bytes of a body are an HTML (or XML) page."""
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    return text.startswith(b"<") and any(
        tag in text
        for tag in (b"<!doctype html", b"<html", b"<head", b"<body", b"<?xml")
    )


def _hdf5_end(f, size: int) -> float | None:
    """The byte count the HDF5 superblock declares, or `None` without one.

    The superblock sits at offset 0, 512, 1024, 2048, ... and records the
    end-of-file address; a file shorter than that was cut short. A superblock
    that is itself cut short gives `math.inf`.
    """
    offset = 0
    while offset + 64 <= size or offset == 0:
        f.seek(offset)
        block = f.read(64)
        if block[:8] == HDF5_SIGNATURE:
            if len(block) < 16:
                return math.inf
            version = block[8]
            if version in (0, 1):
                width = block[13]
                fields = 24 + (4 if version == 1 else 0)
            else:
                width = block[9]
                fields = 12
            if width not in (2, 4, 8):
                return size  # An unknown layout: leave it to h5py.
            if len(block) < fields + 3 * width:
                return math.inf
            # Base address, superblock extension or free-space address, then
            # the end-of-file address, which the HDF5 library compares with
            # the file size as is (user block included).
            eof_at = fields + 2 * width
            eof = int.from_bytes(block[eof_at : eof_at + width], "little")
            if eof == (1 << (8 * width)) - 1:  # The "undefined address".
                return size
            return eof
        offset = 512 if offset == 0 else offset * 2
    return None


def content_problem(path: str | os.PathLike) -> ContentProblem | None:
    """What is wrong with a file that should be HDF5, or `None` if nothing.

    Args:
        path: The file to check.

    Returns:
        `None` for a complete HDF5 file, else a `ContentProblem`.

    Raises:
        WeightsError: If `path` is not a regular file (a folder, a FIFO, ...).
    """
    check_regular(path)
    size = os.path.getsize(path)
    if size == 0:
        return ContentProblem("empty", "empty (0 bytes)")
    with open(path, "rb") as f:
        head = f.read(HEAD_BYTES)
        end = _hdf5_end(f, size)
    if end is None:
        if looks_like_html(head):
            return ContentProblem(
                "html",
                "an HTML page, not an HDF5 weights file (a login or proxy page, "
                "most likely)",
            )
        image = next((words for magic, words in _IMAGES if head.startswith(magic)), None)
        if image is None and head[:4] == b"RIFF" and head[8:12] == b"WEBP":
            image = "a WebP image"
        if image is not None:
            return ContentProblem("image", f"{image}, not an HDF5 file")
        if head.startswith(b"PK\x03\x04"):
            return ContentProblem(
                "zip",
                "a zip archive (a `.keras` model file?), not an HDF5 weights file",
            )
        return ContentProblem(
            "not_hdf5", f"not an HDF5 file (it starts with {head[:16]!r})"
        )
    if end == math.inf:
        return ContentProblem(
            "truncated", f"a truncated HDF5 file: {size:,} bytes, less than its header"
        )
    if size < end:
        return ContentProblem(
            "truncated",
            f"a truncated HDF5 file: {size:,} bytes of the {end:,} its header declares",
        )
    return None
