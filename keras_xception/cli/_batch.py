"""Options and running of the batch commands: `embed` and `classify --output DIR`.

`add_batch_arguments(parser)` adds the options both commands take (an option
the parser already has, such as classify's `--top`, is kept as it is), and
`run_batch(args, kind)` runs `keras_xception.batch.run` with them.

Results go into the `--output` folder, one Parquet dataset; stdout gets
only `--json`'s manifest; progress, one line per unreadable input and a
closing summary go to stderr. Exit status: 0 when every input was read, 1
when some were not (they are in `_errors.parquet`; the others' results are
complete either way) or for an expected error, 130 on Ctrl-C.
"""

from __future__ import annotations

import json
import os
import sys

from keras_xception.checks import MAX_BATCH_SIZE
from keras_xception.cli._args import output_path, positive_int
from keras_xception.cli._inputs import capped_batch_size
from keras_xception.errors import counted


def _add(parser, *flags, **kwargs):
    if any(flag in parser._option_string_actions for flag in flags):
        return
    parser.add_argument(*flags, **kwargs)


def add_batch_arguments(parser):
    """Adds the batch options (`--output`, `--engine`, ...) to `parser`."""
    from keras_xception.batch import ENGINES
    from keras_xception.batch.sources import DEFAULT_PATH_COLUMN, DEFAULT_SHARD_SIZE

    _add(parser, "--output", type=output_path, metavar="DIR",
         help="write the results into DIR as a Parquet dataset (with "
         "_errors.parquet and _manifest.json); a rerun skips completed shards")
    _add(parser, "--engine", choices=ENGINES, default="auto",
         help="'local' (in this process), 'ray' (Ray Data, embedded on this "
         "machine or the cluster of --address) or 'auto' (default: ray with "
         "--address or more than 10,000 inputs, else local)")
    _add(parser, "--address", metavar="ADDRESS",
         help="a Ray cluster: 'auto', 'ray://HOST:PORT' or 'HOST:PORT' "
         "(default: start Ray on this machine, on 127.0.0.1 only)")
    _add(parser, "--batch-size", type=positive_int, default=8, metavar="N",
         help=f"images per forward pass (default: 8; at most {MAX_BATCH_SIZE})")
    _add(parser, "--weights", default="imagenet",
         help="'imagenet' (default), a weights file or an http(s) URL")
    _add(parser, "--model", metavar="PATH.keras",
         help="a fine-tuned .keras model instead of --weights")
    _add(parser, "--precision", choices=("auto", "float32", "bfloat16"),
         help="compute precision (default: float32, so embeddings from "
         "different machines can share one index; auto: bfloat16 where the "
         "CPU computes it natively and a probe check holds; an int8 --model "
         "runs in int8)")
    _add(parser, "--path-column", default=DEFAULT_PATH_COLUMN, metavar="NAME",
         help="the column of paths in a .csv or .parquet list "
         f"(default: {DEFAULT_PATH_COLUMN})")
    _add(parser, "--shard-size", type=positive_int, default=DEFAULT_SHARD_SIZE,
         metavar="N", help="inputs per result file, the unit a rerun skips "
         f"(default: {DEFAULT_SHARD_SIZE})")
    _add(parser, "--max-pixels", type=positive_int, default=None, metavar="N",
         help="refuse images larger than N pixels (default: "
         "$KERAS_XCEPTION_MAX_PIXELS, else 178956970)")
    _add(parser, "--overwrite", action="store_true",
         help="replace results of another model or other inputs in --output")
    _add(parser, "--json", action="store_true",
         help="print the manifest (inputs, model, counts) as JSON on stdout at the end")


# Options that only a batch job (`--output DIR`) uses, with their defaults.
def _batch_only(args) -> list[str]:
    from keras_xception.batch.sources import DEFAULT_PATH_COLUMN, DEFAULT_SHARD_SIZE

    given = {
        "--engine": args.engine != "auto",
        "--address": args.address is not None,
        "--path-column": args.path_column != DEFAULT_PATH_COLUMN,
        "--shard-size": args.shard_size != DEFAULT_SHARD_SIZE,
        "--overwrite": args.overwrite,
    }
    return [option for option, set_ in given.items() if set_]


def check_batch_only(args) -> None:
    """Refuses batch options given without `--output` (they would do nothing).

    Raises:
        keras_xception.errors.ConfigError: Naming the options.
    """
    from keras_xception.errors import ConfigError

    given = _batch_only(args)
    if given:
        raise ConfigError(
            f"{', '.join(given)} {'applies' if len(given) == 1 else 'apply'} only to a "
            "batch job: add --output DIR to write Parquet results there, or leave "
            f"{'it' if len(given) == 1 else 'them'} out."
        )


def run_batch(args, kind) -> int:
    """Runs `kind` (`"embed"` or `"classify"`) with the parsed `args`.

    Returns:
        The exit status: 0, or 1 if some inputs could not be read.
    """
    from keras_xception import batch
    from keras_xception.errors import ConfigError

    if getattr(args, "output", None) is None:
        raise ConfigError(f"{kind} needs --output DIR for batch results")
    if getattr(args, "jsonl", False):
        raise ConfigError(
            "--jsonl prints results as they come, which a batch job writes to "
            "--output instead; use --json for its manifest, or leave --output out."
        )
    batch_size = capped_batch_size(args.batch_size, kind)

    def on_error(path, message):
        print(f"error: {message}", file=sys.stderr, flush=True)

    manifest = batch.run(
        kind, args.paths, args.output,
        engine=args.engine, address=args.address, batch_size=batch_size,
        weights=args.weights, model_path=args.model, top=getattr(args, "top", None),
        precision=args.precision, path_column=args.path_column,
        shard_size=args.shard_size, max_pixels=args.max_pixels,
        overwrite=args.overwrite, progress=sys.stderr, on_error=on_error,
    )
    counts = manifest["counts"]
    output = os.fsdecode(args.output)
    images = counts["images"]
    summary = f"{kind}: {counted(images, 'image')} written to {output!r}"
    if counts["errors"]:
        summary += (f"; {counts['errors']:,} unreadable, listed in "
                    f"{os.path.join(output, '_errors.parquet')!r}")
    print(summary, file=sys.stderr, flush=True)
    if args.json:
        json.dump(manifest, sys.stdout, indent=2)
        sys.stdout.write("\n")
        sys.stdout.flush()
    return 1 if counts["errors"] else 0
