"""The output folder of a batch job: one Parquet dataset, written shard by shard.

    DIR/part-000000-1f0e9c2ab4d7.parquet   results of shard 0 (one row per readable image)
    DIR/part-000001-....parquet            ...
    DIR/_job.json                          the model, inputs and columns of the run
    DIR/_job.lock                          held by the job writing DIR
    DIR/_errors.d/part-....parquet         unreadable inputs of each shard
    DIR/_errors.parquet                    all unreadable inputs: path, reason, path_bytes
    DIR/_manifest.json                     written last: the run is complete

`pyarrow.dataset.dataset(DIR, format="parquet")` reads every result: other
names begin with `_` or `.`, which Parquet readers skip (Spark's `_SUCCESS`
convention).

Every row of the results and of the errors names its input twice
(`keras_xception.batch.paths`): `path`, text to read (a name that is not
UTF-8 shown with `\\xNN` escapes, so not unique), and `path_bytes`, the
last column, the name's exact bytes: `os.fsdecode(row["path_bytes"])` opens
the file again.

One job at a time: `open` takes `_job.lock` (`filelock`, a lock of the
operating system, so a killed job's lock goes with its process) before it
changes anything, and a second job on the folder fails at once. Nothing is
written to DIR before `open`, which `batch.run` calls once every check has
passed.

Each file is written under a temporary name beginning with `.` and renamed
when complete (`keras_xception.fileio`), the shard's errors before its
results: a shard whose result file exists is complete, and a rerun skips it.
A shard is written by whichever process computed it (`write_shard`: this
process on the local engine, the model actor on Ray), never sent back to
the driver. A process killed at any moment leaves at most temporary files,
which the next run of the job removes once it holds the lock.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import shutil

from keras_xception import fileio
from keras_xception.batch import paths as paths_lib
from keras_xception.errors import ConfigError

JOB = "_job.json"
LOCK = "_job.lock"
MANIFEST = "_manifest.json"
ERRORS = "_errors.parquet"
ERROR_PARTS = "_errors.d"

_PART = re.compile(r"part-\d{6}-[0-9a-f]{12}\.parquet")
_OWN = {JOB, LOCK, MANIFEST, ERRORS, ERROR_PARTS}


def _remove(path: pathlib.Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _is_temporary(name: str) -> bool:
    """Whether `name` is a temporary `fileio` left (`.<name>.<random>.tmp<suffix>`)."""
    return name.startswith(".") and fileio.TEMP_SUFFIX in name


def error_schema():
    """The Arrow schema of the error table: `path`, `reason` (strings), `path_bytes`."""
    import pyarrow as pa

    return pa.schema([(paths_lib.PATH, pa.string()), ("reason", pa.string()),
                      paths_lib.bytes_field()])


def error_table(errors):
    """An Arrow table of `(path, reason)` pairs."""
    import pyarrow as pa

    errors = list(errors)
    paths = [p for p, _ in errors]
    return pa.Table.from_arrays(
        [paths_lib.text_array(paths),
         pa.array([str(r) for _, r in errors], pa.string()),
         paths_lib.bytes_array(paths)],
        schema=error_schema(),
    )


def _write_parquet(path: pathlib.Path, table) -> None:
    import pyarrow.parquet as pq

    with fileio.atomic_path(path, suffix=".parquet") as tmp:
        pq.write_table(table, tmp)


def result_path(output, shard) -> pathlib.Path:
    """The result file of `shard` in `output`."""
    return pathlib.Path(output) / f"{shard.name}.parquet"


def error_path(output, shard) -> pathlib.Path:
    """The error file of `shard` in `output`."""
    return pathlib.Path(output) / ERROR_PARTS / f"{shard.name}.parquet"


def write_shard(output, shard, table, errors) -> None:
    """Writes one shard's results and errors, each atomically, errors first.

    Called by the process that computed the shard (a Ray actor on another
    machine, even): it needs only the folder, which `Sink.open` prepared.

    Args:
        output: The output folder.
        shard: The `sources.Shard`.
        table: Its results, an Arrow table in the job's result schema.
        errors: Its unreadable inputs, as `(path, reason)` pairs.
    """
    _write_parquet(error_path(output, shard), error_table(errors))
    _write_parquet(result_path(output, shard), table)


def busy_message(output) -> str:
    """The one line for an output folder that another job holds."""
    return (f"--output {str(output)!r} is being written by another job, which "
            f"holds {LOCK}: wait for it to finish, or choose another --output.")


class Sink:
    """Prepares a job's output folder, holds its lock and knows which shards are done.

    Use it as a context manager, or call `close`, to release the lock.

    Args:
        output: The output folder (created by `open`, if missing).
        kind: `"embed"` or `"classify"`.
    """

    def __init__(self, output, kind):
        self.output = fileio.check_output_folder(output, what="--output")
        self.kind = kind
        self._lock = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _path(self, shard) -> pathlib.Path:
        return result_path(self.output, shard)

    def _error_path(self, shard) -> pathlib.Path:
        return error_path(self.output, shard)

    def done(self, shard) -> bool:
        """Whether `shard`'s results (and so its errors) are on disk."""
        return self._path(shard).is_file() and self._error_path(shard).is_file()

    def _entries(self):
        if not self.output.exists():
            return []
        if not self.output.is_dir():
            raise ConfigError(
                f"--output {str(self.output)!r} is a file; batch results go "
                "into a folder. Choose another path."
            )
        return sorted(os.listdir(self.output))

    def claim(self) -> None:
        """Takes the lock now if the folder has one, so a busy folder fails at once.

        Writes nothing: a folder without `_job.lock` gets it from `open`.

        Raises:
            ConfigError: If another job holds the lock.
        """
        if self._lock is None and (self.output / LOCK).is_file():
            self._acquire()

    def _acquire(self) -> None:
        from filelock import FileLock, Timeout

        lock = FileLock(os.fspath(self.output / LOCK))
        try:
            lock.acquire(timeout=0)
        except Timeout:
            raise ConfigError(busy_message(self.output)) from None
        self._lock = lock

    def close(self) -> None:
        """Releases the lock (a no-op when not held)."""
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def _refusal(self, entries, job, shards):
        """Why the folder's contents cannot take this run's results, or `None`."""
        foreign = [n for n in entries
                   if n not in _OWN and not _PART.fullmatch(n) and not _is_temporary(n)]
        if foreign:
            raise ConfigError(
                f"--output {str(self.output)!r} holds files that are not batch "
                f"results (such as {foreign[0]!r}); choose a new or empty folder."
            )
        parts = {n[: -len(".parquet")] for n in entries if _PART.fullmatch(n)}
        previous = None
        if JOB in entries:
            try:
                previous = json.loads((self.output / JOB).read_text(encoding="utf-8"))
            except (OSError, ValueError):
                previous = None
        if previous is None and parts:
            return "results of an unknown run (its _job.json is missing or damaged)"
        if previous is not None and previous.get("model") != job["model"]:
            # The model, its precision or the top asked for (`_describe`).
            return (f"results of another model or other settings "
                    f"({_describe(previous.get('model'))}; "
                    f"this run: {_describe(job['model'])})")
        if previous is not None and parts and previous.get("columns") != job.get("columns"):
            return (f"results with other columns ({_columns(previous.get('columns'))}; "
                    f"this run: {_columns(job.get('columns'))})")
        others = parts - {s.name for s in shards}
        if others:
            return (f"results for other inputs ({len(others)} result files that "
                    "this run's inputs do not make)")
        return None

    def open(self, job: dict, shards, *, overwrite: bool):
        """Prepares the folder for a run and returns the shards still to do.

        The folder is checked first, then created and locked, then checked
        again (another job may have changed it before the lock was taken);
        only then are a killed run's temporaries removed and `_job.json`
        written.

        Args:
            job: The run's identity (`model`: `ModelSpec.identity()`,
                `columns`: the result columns, and more), written to
                `_job.json` and compared with an earlier run's.
            shards: All of the run's shards.
            overwrite: Whether earlier results of another model, other
                columns or other inputs are deleted instead of refused.

        Returns:
            The shards without results, in order.

        Raises:
            ConfigError: If another job holds the folder, it holds files
                that are not batch results, or (unless `overwrite`) results
                of another model, other columns or other inputs.
        """
        for locked in (False, True):
            if locked:
                self.output.mkdir(parents=True, exist_ok=True)
                if self._lock is None:
                    self._acquire()
            entries = self._entries()
            reason = self._refusal(entries, job, shards)
            if reason is not None and not overwrite:
                raise ConfigError(
                    f"--output {str(self.output)!r} holds {reason}. Pass --overwrite "
                    "to replace them, or choose another --output."
                )
        if overwrite:
            self._clear(entries)
        else:
            for name in entries:
                if _is_temporary(name):
                    _remove(self.output / name)
        (self.output / ERROR_PARTS).mkdir(exist_ok=True)
        for name in os.listdir(self.output / ERROR_PARTS):
            if _is_temporary(name):
                _remove(self.output / ERROR_PARTS / name)
        pending = [s for s in shards if not self.done(s)]
        if pending:
            # The manifest marks a complete run; this one is not (yet).
            (self.output / MANIFEST).unlink(missing_ok=True)
        fileio.write_text(self.output / JOB, json.dumps(job, indent=2) + "\n")
        return pending

    def _clear(self, entries):
        for name in entries:
            if name != LOCK:  # Held by this job: removing it would let another in.
                _remove(self.output / name)

    def write_shard(self, shard, table, errors) -> None:
        """`write_shard` into this sink's folder."""
        write_shard(self.output, shard, table, errors)

    def finish(self, shards, scan_errors, manifest: dict) -> dict:
        """Writes `_errors.parquet`, then `_manifest.json` with the counts.

        Result rows are counted from each result file's Parquet footer
        (`pyarrow.parquet.read_metadata`), not by reading the results.

        Args:
            shards: All of the run's shards (each must be done).
            scan_errors: `(path, reason)` pairs for sources that gave no
                input (missing files, folders without images).
            manifest: The manifest's other entries.

        Returns:
            The manifest written, `counts` added: `inputs` (paths in the
            shards), `images` (result rows), `errors` (error rows) and
            `shards`.
        """
        import pyarrow.parquet as pq

        images = errors = 0
        with fileio.atomic_path(self.output / ERRORS, suffix=".parquet") as tmp:
            with pq.ParquetWriter(tmp, error_schema()) as writer:
                if scan_errors:
                    writer.write_table(error_table(scan_errors))
                    errors += len(scan_errors)
                for shard in shards:
                    table = pq.read_table(self._error_path(shard))
                    if table.num_rows:
                        writer.write_table(table.cast(error_schema()))
                    errors += table.num_rows
                    images += pq.read_metadata(self._path(shard)).num_rows
        manifest = dict(manifest)
        manifest["counts"] = {
            "inputs": sum(len(s.paths) for s in shards),
            "images": images,
            "errors": errors,
            "shards": len(shards),
        }
        fileio.write_text(self.output / MANIFEST, json.dumps(manifest, indent=2) + "\n")
        return manifest


def _columns(columns) -> str:
    return ", ".join(map(str, columns)) if isinstance(columns, list) else "not recorded"


def _describe(model) -> str:
    if not isinstance(model, dict):
        return "unknown"
    source = model.get("source") or model.get("weights") or model.get("model") or "?"
    text = f"{model.get('kind')} with {source}, sha256 {str(model.get('sha256'))[:12]}"
    if model.get("precision"):
        text += f", precision {model['precision']}"
    if "top" in model:
        text += f", top {model['top']}"
    return text
