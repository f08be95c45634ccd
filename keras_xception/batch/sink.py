"""The output folder of a batch job: one Parquet dataset, written shard by shard.

    DIR/part-000000-1f0e9c2ab4d7.parquet   results of shard 0 (one row per readable image)
    DIR/part-000001-....parquet            ...
    DIR/_job.json                          the model and inputs, written first
    DIR/_errors.d/part-....parquet         unreadable inputs of each shard
    DIR/_errors.parquet                    all unreadable inputs: path, reason
    DIR/_manifest.json                     written last: the run is complete

`pyarrow.dataset.dataset(DIR, format="parquet")` reads every result: other
names begin with `_` or `.`, which Parquet readers skip (Spark's `_SUCCESS`
convention).

Each file is written under a temporary name beginning with `.` and renamed
when complete (`keras_xception.fileio`), the shard's errors before its
results: a shard whose result file exists is complete, and a rerun skips it.
A process killed at any moment leaves at most temporary files, which the
next run removes.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import shutil

from keras_xception import fileio
from keras_xception.errors import ConfigError

JOB = "_job.json"
MANIFEST = "_manifest.json"
ERRORS = "_errors.parquet"
ERROR_PARTS = "_errors.d"

_PART = re.compile(r"part-\d{6}-[0-9a-f]{12}\.parquet")
_OWN = {JOB, MANIFEST, ERRORS, ERROR_PARTS}


def _remove(path: pathlib.Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _is_temporary(name: str) -> bool:
    return name.startswith(".") and fileio.TEMP_SUFFIX in name


def error_schema():
    """The Arrow schema of the error table: `path`, `reason` (strings)."""
    import pyarrow as pa

    return pa.schema([("path", pa.string()), ("reason", pa.string())])


def error_table(errors):
    """An Arrow table of `(path, reason)` pairs."""
    import pyarrow as pa

    from keras_xception.batch.models import column_text

    return pa.Table.from_arrays(
        [pa.array([column_text(p) for p, _ in errors], pa.string()),
         pa.array([str(r) for _, r in errors], pa.string())],
        schema=error_schema(),
    )


def _write_parquet(path: pathlib.Path, table) -> None:
    import pyarrow.parquet as pq

    with fileio.atomic_path(path, suffix=".parquet") as tmp:
        pq.write_table(table, tmp)


class Sink:
    """Writes a job's results into `output` and knows which shards are done.

    Args:
        output: The output folder (created if missing).
        kind: `"embed"` or `"classify"`.
    """

    def __init__(self, output, kind):
        self.output = fileio.check_parent(output, what="--output")
        self.kind = kind

    def _path(self, shard) -> pathlib.Path:
        return self.output / f"{shard.name}.parquet"

    def _error_path(self, shard) -> pathlib.Path:
        return self.output / ERROR_PARTS / f"{shard.name}.parquet"

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

    def open(self, job: dict, shards, *, overwrite: bool):
        """Prepares the folder for a run and returns the shards still to do.

        Args:
            job: The run's identity (`ModelSpec.identity()` and more),
                written to `_job.json` and compared with an earlier run's.
            shards: All of the run's shards.
            overwrite: Whether earlier results of another model, or of other
                inputs, are deleted instead of refused.

        Returns:
            The shards without results, in order.

        Raises:
            ConfigError: If the folder holds files that are not batch
                results, or (unless `overwrite`) results of another model or
                other inputs.
        """
        entries = self._entries()
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
        reason = None
        if entries and previous is None and parts:
            reason = "results of an unknown run (its _job.json is missing or damaged)"
        elif previous is not None and previous.get("model") != job["model"]:
            reason = (f"results of another model ({_describe(previous.get('model'))}; "
                      f"this run: {_describe(job['model'])})")
        elif parts - {s.name for s in shards}:
            reason = (f"results for other inputs ({len(parts - {s.name for s in shards})} "
                      "result files that this run's inputs do not make)")
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
        self.output.mkdir(parents=True, exist_ok=True)
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
            _remove(self.output / name)

    def write_shard(self, shard, table, errors) -> None:
        """Writes one shard's results and errors, each atomically, errors first.

        Args:
            shard: The `sources.Shard`.
            table: Its results, an Arrow table in the job's result schema.
            errors: Its unreadable inputs, as `(path, reason)` pairs.
        """
        _write_parquet(self._error_path(shard), error_table(errors))
        _write_parquet(self._path(shard), table)

    def finish(self, shards, scan_errors, manifest: dict) -> dict:
        """Writes `_errors.parquet`, then `_manifest.json` with the counts.

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
                    images += pq.ParquetFile(self._path(shard)).metadata.num_rows
        manifest = dict(manifest)
        manifest["counts"] = {
            "inputs": sum(len(s.paths) for s in shards),
            "images": images,
            "errors": errors,
            "shards": len(shards),
        }
        fileio.write_text(self.output / MANIFEST, json.dumps(manifest, indent=2) + "\n")
        return manifest


def _describe(model) -> str:
    if not isinstance(model, dict):
        return "unknown"
    source = model.get("weights") or model.get("model") or "?"
    text = f"{model.get('kind')} with {source}, sha256 {str(model.get('sha256'))[:12]}"
    if model.get("precision"):
        text += f", precision {model['precision']}"
    if "top" in model:
        text += f", top {model['top']}"
    return text
