"""Batch embeddings and classification of image collections, resumable.

    from keras_xception import batch

    manifest = batch.run("embed", ["photos/", "more.csv"], "out/")
    # pyarrow.dataset.dataset("out/", format="parquet"): path, embedding

`run` expands the sources (files, folders, `.txt`/`.csv`/`.parquet` lists of
paths; `sources`), cuts the paths into shards with stable names, skips the
shards an earlier run with the same model and inputs completed, processes
the rest on an engine and writes each shard's results atomically (`sink`).

Before anything is written to the output folder, every check has passed:
the arguments, the optional extras (`checks.require`), the sources, the
Ray address and the model (including `top` against its classes). Then
`sink.Sink.open` locks the folder (a second job on it fails at once),
removes what a killed run left, and records the job.

Each row names its input twice (`paths`): `path`, text to read, and
`path_bytes`, the exact bytes of the name, which stay unique and open the
file again (`os.fsdecode(row["path_bytes"])`) where the name is not UTF-8.

Engines:

- `"local"`: in this process, the pipeline `keras-xception classify` uses
  (`local_engine`);
- `"ray"`: decoding in Ray tasks, the model in a pool of Ray actors, each
  writing the shards it computed (`ray_engine`; on a cluster, `output` must
  be a folder every node sees); embedded on this machine (listening on
  127.0.0.1 only) unless `address` names a cluster (`"auto"`,
  `"ray://HOST:PORT"`);
- `"auto"` (default): `"ray"` when `address` is given or there are more
  than `AUTO_LOCAL_MAX` inputs and Ray is installed, else `"local"`.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os

from keras_xception.batch.models import CLASSIFY, KINDS, ModelSpec, result_schema
from keras_xception.batch.sources import DEFAULT_PATH_COLUMN, DEFAULT_SHARD_SIZE
from keras_xception.checks import MAX_TOP as TOP_MAX
from keras_xception.checks import positive_int
from keras_xception.errors import ConfigError, counted

__all__ = ["AUTO_LOCAL_MAX", "ENGINES", "run"]

ENGINES = ("auto", "local", "ray")

# Up to this many inputs, `engine="auto"` runs in-process: starting Ray and
# its actors costs more than it saves on a small job.
AUTO_LOCAL_MAX = 10_000


_VERSIONS = ("keras", "tensorflow", "tensorflow-cpu", "jax", "numpy", "pillow",
             "pyarrow", "ray")


def ray_available() -> bool:
    """Whether Ray and pyarrow can be imported (the `ray` extra)."""
    from keras_xception import checks

    return not checks.missing("ray")


def choose_engine(engine, address, count) -> str:
    """The engine `run` uses: see the module docstring for `"auto"`.

    Raises:
        ConfigError: For an unknown engine, `address` with the local engine,
            or the Ray engine without Ray installed.
    """
    if engine not in ENGINES:
        raise ConfigError(
            f"--engine must be one of {', '.join(ENGINES)}. Received: --engine {engine!r}"
        )
    if engine == "auto":
        if address or (count > AUTO_LOCAL_MAX and ray_available()):
            engine = "ray"
        else:
            engine = "local"
    if engine == "local" and address:
        raise ConfigError(
            f"--address names a Ray cluster, which --engine local does not use. "
            f"Received: --address {address!r} --engine local"
        )
    if engine == "ray":
        from keras_xception import checks

        checks.require("ray", "--engine ray")
    return engine


def _versions() -> dict:
    from keras_xception import __version__

    out = {"keras-xception": __version__}
    for name in _VERSIONS:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return out


def _model_spec(kind, weights, model_path, precision, top, stream) -> ModelSpec:
    """The job's model, checked (with `top`) before anything is written."""
    from keras_xception.source import open_source

    given = weights if model_path is None else model_path
    source = open_source(given, need_top=kind == CLASSIFY, progress=stream)
    if source.kind == "int8":  # Quantized already: it runs as it is.
        from keras_xception.inference.int8_folder import check_precision

        check_precision(source.given, precision or "int8", None)
        precision = "int8"
    elif precision is None:
        precision = "float32"
    if kind == CLASSIFY:
        top = source.check_top(top)
    else:
        source.check_embed()
    return ModelSpec(kind, source, precision=precision, top=top)


def run(
    kind,
    sources,
    output,
    *,
    engine="auto",
    address=None,
    batch_size=8,
    weights="imagenet",
    model_path=None,
    top=None,
    precision=None,
    path_column=DEFAULT_PATH_COLUMN,
    shard_size=DEFAULT_SHARD_SIZE,
    max_pixels=None,
    overwrite=False,
    progress=None,
    on_error=None,
    ray_options=None,
):
    """Runs a batch job over `sources`, writing a Parquet dataset to `output`.

    Args:
        kind: `"embed"` (columns `path`, `embedding`: 2048 float32) or
            `"classify"` (`path`, `class_index`, `class_name`, `score`:
            top-k lists).
        sources: Files, folders and `.txt`/`.csv`/`.parquet` lists of paths.
        output: The output folder (see `sink`).
        engine: `"auto"`, `"local"` or `"ray"`.
        address: A Ray cluster (`"auto"`, `"ray://HOST:PORT"`, `"HOST:PORT"`)
            or `None` for Ray embedded on this machine.
        batch_size: Images per forward pass.
        weights: `"imagenet"`, a weights file or URL; for `embed` a no-top
            or a full file (its base is used).
        model_path: A `.keras` model file instead of `weights` (a fine-tuned
            classifier from `keras-xception fine-tune`).
        top: Classes per image for `classify`, 1 to 1000 and at most the
            model's classes; `None` for 5 (or all of a model's fewer classes).
        precision: `"float32"`, `"bfloat16"` or `"auto"`, passed to
            `optimize_for_inference(precision=...)`; `None` (default) is
            `"float32"`, or `"int8"` for an int8 model folder from
            `keras-xception quantize`, which runs as it is (`"auto"` and
            `"int8"` are accepted for it, nothing else). The manifest
            records the precision that ran. Results of different precisions
            are never mixed in one output.
        path_column: The column of paths in `.csv`/`.parquet` lists.
        shard_size: Inputs per shard (the unit written atomically and
            skipped by a rerun).
        max_pixels: The pixel limit for decoding (`images.decode`).
        overwrite: Replace earlier results of another model or other inputs
            in `output` instead of refusing.
        progress: A text stream for progress lines (e.g. `sys.stderr`), or
            `None`.
        on_error: Called as `on_error(path, reason)` for each source or
            image that cannot be read (besides the error table), or `None`.
        ray_options: More keyword arguments for `ray.init` (embedded Ray).

    Returns:
        The manifest written to `output/_manifest.json`, as a dict; its
        `counts["errors"]` is the number of unreadable inputs.

    Raises:
        ConfigError: For a bad argument, a missing extra (pyarrow; Ray for
            the Ray engine), an output folder another job is writing or
            holding other results (without `overwrite`), or a list file
            that cannot be read.
        WeightsError: If the weights cannot be found or do not fit.
    """
    from keras_xception import checks
    from keras_xception.batch import sink as sink_lib
    from keras_xception.images import max_pixels_limit

    checks.require("batch", kind)
    if kind not in KINDS:
        raise ConfigError(f"`kind` must be one of {', '.join(KINDS)}. Received: kind={kind!r}")
    if top is not None:
        positive_int(top, "--top", maximum=TOP_MAX)
    batch_size = positive_int(batch_size, "--batch-size")
    if model_path is not None and weights not in (None, "imagenet"):
        raise ConfigError(
            "--model already holds its weights; pass --model or --weights, not "
            f"both. Received: --weights {weights!r}"
        )
    if isinstance(sources, (str, bytes, os.PathLike)):
        sources = [sources]
    sources = [os.fsdecode(s) for s in sources]
    max_pixels = max_pixels_limit(max_pixels)
    with sink_lib.Sink(output, kind) as sink:
        # A folder another job holds fails here, before any work; nothing
        # is written to it until `sink.open`, after every check.
        sink.claim()
        return _run_checked(
            kind, sources, sink, engine=engine, address=address, batch_size=batch_size,
            weights=weights, model_path=model_path, top=top, precision=precision,
            path_column=path_column, shard_size=shard_size, max_pixels=max_pixels,
            overwrite=overwrite, stream=progress, on_error=on_error,
            ray_options=ray_options,
        )


def _run_checked(kind, sources, sink, *, engine, address, batch_size, weights, model_path,
                 top, precision, path_column, shard_size, max_pixels, overwrite, stream,
                 on_error, ray_options):
    """`run` once its arguments are checked and `sink` holds the lock, if any."""
    from keras_xception.batch import progress as progress_lib
    from keras_xception.batch import sources as sources_lib

    scan_errors = []

    def scan_error(path, message):
        scan_errors.append((os.fsdecode(path), message))
        if on_error is not None:
            on_error(path, message)

    paths = sources_lib.expand(sources, path_column=path_column, on_error=scan_error)
    if not paths and not scan_errors:
        raise ConfigError(f"No image paths in {', '.join(map(repr, sources))}")
    engine = choose_engine(engine, address, len(paths))
    if engine == "ray":
        from keras_xception.batch.ray_engine import check_address

        check_address(address)
    shards = sources_lib.make_shards(paths, shard_size)
    del paths
    # The model and --top against its classes, before the folder is touched.
    spec = _model_spec(kind, weights, model_path, precision, top, stream or False)
    job = {"model": spec.identity(), "sources": sources,
           "columns": result_schema(kind).names}
    pending = sink.open(job, shards, overwrite=overwrite)

    def on_shard(shard, errors):
        if on_error is not None:
            for path, reason in errors:
                on_error(path, reason)

    counter = progress_lib.Progress(kind, sum(len(s.paths) for s in pending), stream)
    if pending:
        if stream is not None and len(pending) < len(shards):
            print(f"{kind}: {len(shards) - len(pending)} of {len(shards)} shards done "
                  "by an earlier run; doing the rest", file=stream, flush=True)
        common = dict(batch_size=batch_size, max_pixels=max_pixels, output=sink.output,
                      on_shard=on_shard, progress=counter)
        if engine == "ray":
            from keras_xception.batch import ray_engine

            ray_engine.run(pending, spec, address=address, ray_options=ray_options,
                           **common)
        else:
            from keras_xception.batch import local_engine

            local_engine.run(pending, spec, **common)
        counter.close()
    unseen = [s for s in pending if not sink.done(s)]
    if unseen:
        raise ConfigError(
            f"shards were written where this machine does not see them "
            f"({counted(len(unseen), 'shard')}, such as {unseen[0].name}.parquet in --output "
            f"{str(sink.output)!r}): on a "
            "Ray cluster, --output must be a folder every node sees at the same path"
        )
    manifest = {
        "kind": kind,
        "inputs": sources,
        "path_column": path_column,
        "model": spec.identity(),
        "score_rule": spec.source.score_rule if kind == CLASSIFY else None,
        "weights": spec.weights,
        "model_path": spec.model_path,
        "precision": spec.precision,
        "engine": engine,
        "address": address,
        "batch_size": batch_size,
        "shard_size": shard_size,
        "columns": result_schema(kind).names,
        "versions": _versions(),
    }
    return sink.finish(shards, scan_errors, manifest)

