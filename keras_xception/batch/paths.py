"""How a batch job stores an input's path: a text column to read, a bytes column to open.

A file name on POSIX is bytes, and need not be UTF-8; Parquet's strings
must be. So every result row and every error row holds its path twice:

- `path` (string): the path for people and joins, exactly the file name
  where it is valid UTF-8; bytes that are not UTF-8 are shown as `\\xNN`
  (Python's `backslashreplace`). This text is not unique: the file named
  with the byte 0xE9 and a file literally named `\\xe9` both show as
  `\\xe9`, and the former cannot be opened from it;
- `path_bytes` (binary, the last column): `os.fsencode(path)`, the path
  exactly as the operating system names it. It is unique and lossless:
  `os.fsdecode(row["path_bytes"])` (`from_bytes`) opens the file again.

A `.parquet` list of inputs may name either column with `--path-column`,
so a job's results can be fed to the next job without losing a name.
"""

from __future__ import annotations

import os

PATH = "path"
PATH_BYTES = "path_bytes"


def text(path) -> str:
    """A path as Parquet text: bytes that are not UTF-8 shown as `\\xNN`."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def from_bytes(value: bytes) -> str:
    """The path to open for a stored `path_bytes` value."""
    return os.fsdecode(bytes(value))


def text_array(paths):
    """The `path` column (Arrow strings) for `paths`."""
    import pyarrow as pa

    return pa.array([text(p) for p in paths], pa.string())


def bytes_array(paths):
    """The `path_bytes` column (Arrow binary) for `paths`."""
    import pyarrow as pa

    return pa.array([os.fsencode(p) for p in paths], pa.binary())


def bytes_field():
    """The Arrow field of the `path_bytes` column."""
    import pyarrow as pa

    return pa.field(PATH_BYTES, pa.binary())
