"""Inputs of a batch job: files, folders and lists of paths, split into shards.

A source (`SRC` on the command line) is one of:

- a folder: searched recursively by `keras_xception.images.find_images`
  (the walker `classify` uses), for files with an image extension;
- a `.txt` file: one path per line (empty lines are skipped);
- a `.csv` file with a header row: the paths are in the column named by
  `path_column` (default `"path"`);
- a `.parquet` file: the paths are in the column `path_column`, read a
  row group at a time: strings, or bytes taken as the operating system's
  names (`os.fsdecode`), such as a job's own `path_bytes`
  (`keras_xception.batch.paths`), which keeps names that are not UTF-8;
- any other file: an image, read whatever its name.

A relative path inside a list is relative to the folder of the list file,
so a list can move together with its images. Paths from a list are not
checked here: a missing or unreadable one is reported when it is decoded,
like any other image that cannot be read.

The paths are then cut, in order, into shards of `shard_size`. A shard's
name is its position and a digest of its paths (`part-000003-1f0e9c2ab4d7`),
so the same inputs always give the same shards, and a shard's result file
can be recognised by a later run.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import os
import pathlib

from keras_xception.checks import positive_int
from keras_xception.errors import ConfigError

LIST_SUFFIXES = (".txt", ".csv", ".parquet")
DEFAULT_PATH_COLUMN = "path"
DEFAULT_SHARD_SIZE = 1000


@dataclasses.dataclass(frozen=True)
class Shard:
    """A slice of the inputs, processed and written as one unit.

    Attributes:
        index: Position of the shard, from 0.
        name: Stable name: `part-<index>-<digest of its paths>`.
        paths: The shard's input paths, as `str` (non-UTF-8 bytes of a file
            name kept as lone surrogates, Python's `surrogateescape`).
    """

    index: int
    name: str
    paths: tuple[str, ...]


def shard_name(index: int, paths) -> str:
    """The stable name of the shard at `index` holding `paths`."""
    digest = hashlib.sha256()
    for path in paths:
        digest.update(os.fsencode(path))
        digest.update(b"\0")
    return f"part-{index:06d}-{digest.hexdigest()[:12]}"


def make_shards(paths, shard_size=DEFAULT_SHARD_SIZE) -> list[Shard]:
    """Cuts `paths` into consecutive shards of `shard_size` paths (the last may be smaller).

    Args:
        paths: Input paths in order.
        shard_size: Paths per shard, at least 1.

    Returns:
        The shards, in order.

    Raises:
        ConfigError: If `shard_size` is not a positive integer.
    """
    shard_size = positive_int(shard_size, "shard_size")
    paths = [os.fsdecode(p) for p in paths]
    shards = []
    for start in range(0, len(paths), shard_size):
        chunk = tuple(paths[start:start + shard_size])
        index = len(shards)
        shards.append(Shard(index, shard_name(index, chunk), chunk))
    return shards


def is_list_file(path) -> bool:
    """Whether a source names a list of paths (by its suffix) rather than an image."""
    return os.fsdecode(path).lower().endswith(LIST_SUFFIXES) and os.path.isfile(path)


def _relative_to(list_file: pathlib.Path, entry: str) -> str:
    if os.path.isabs(entry):
        return entry
    return os.path.join(os.path.dirname(os.fsdecode(list_file)), entry)


def _read_text_list(path: pathlib.Path):
    with open(path, encoding="utf-8", errors="surrogateescape", newline="") as f:
        for line in f:
            entry = line.rstrip("\r\n")
            if entry.strip():
                yield entry


def _read_csv_list(path: pathlib.Path, column: str):
    with open(path, encoding="utf-8", errors="surrogateescape", newline="") as f:
        reader = csv.DictReader(f)
        fields = reader.fieldnames or []
        if column not in fields:
            raise ConfigError(
                f"{str(path)!r} has no column {column!r}; its columns are "
                f"{', '.join(map(repr, fields)) or 'none'}. Name the column of "
                f"paths with --path-column. Received: --path-column {column!r}"
            )
        for row in reader:
            entry = row.get(column) or ""
            if entry.strip():
                yield entry


def _read_parquet_list(path: pathlib.Path, column: str):
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except (OSError, pa.ArrowException) as err:
        raise ConfigError(f"Cannot read {str(path)!r} as a Parquet file: {err}") from None
    names = parquet.schema_arrow.names
    if column not in names:
        raise ConfigError(
            f"{str(path)!r} has no column {column!r}; its columns are "
            f"{', '.join(map(repr, names)) or 'none'}. Name the column of "
            f"paths with --path-column. Received: --path-column {column!r}"
        )
    kind = parquet.schema_arrow.field(column).type
    names = pa.types.is_binary(kind) or pa.types.is_large_binary(kind)
    if not (names or pa.types.is_string(kind) or pa.types.is_large_string(kind)):
        raise ConfigError(
            f"Column {column!r} of {str(path)!r} must hold strings or bytes (paths). "
            f"Received: a column of type {kind}"
        )
    for batch in parquet.iter_batches(columns=[column]):
        for entry in batch.column(0).to_pylist():
            if names and entry:
                entry = os.fsdecode(entry)
            if entry and entry.strip():
                yield entry


def read_list(path, path_column=DEFAULT_PATH_COLUMN) -> list[str]:
    """The paths listed in a `.txt`, `.csv` or `.parquet` file.

    Args:
        path: The list file.
        path_column: The column of paths in a `.csv` or `.parquet` file.

    Returns:
        The paths, in the file's order; relative entries joined to the list
        file's folder.

    Raises:
        ConfigError: If the file cannot be read, or has no such column.
    """
    path = pathlib.Path(os.fsdecode(path))
    suffix = path.suffix.lower()
    try:
        if suffix == ".txt":
            entries = list(_read_text_list(path))
        elif suffix == ".csv":
            entries = list(_read_csv_list(path, path_column))
        elif suffix == ".parquet":
            entries = list(_read_parquet_list(path, path_column))
        else:
            raise ConfigError(
                f"A list of paths must end in {', '.join(LIST_SUFFIXES)}. "
                f"Received: {str(path)!r}"
            )
    except OSError as err:
        raise ConfigError(f"Cannot read the list {str(path)!r}: {err.strerror or err}") from None
    except csv.Error as err:
        raise ConfigError(f"Cannot read {str(path)!r} as CSV: {err}") from None
    return [_relative_to(path, entry) for entry in entries]


def expand(sources, *, path_column=DEFAULT_PATH_COLUMN, on_error) -> list[str]:
    """The input paths named by `sources`, in order.

    Args:
        sources: Files, folders and list files (see the module docstring).
        path_column: The column of paths in `.csv` and `.parquet` lists.
        on_error: Called as `on_error(path, message)` for a source that is
            missing, not a file or folder, or a folder without images; the
            other sources are still read.

    Returns:
        The paths, as `str`.

    Raises:
        ConfigError: If a list file cannot be read or lacks `path_column`.
    """
    from keras_xception.images import find_given

    paths: list[str] = []
    for source in sources:
        source = os.fsdecode(source)
        if is_list_file(source):
            paths.extend(read_list(source, path_column))
            continue
        paths.extend(os.fsdecode(p) for p in find_given(source, on_error=on_error))
    return paths
