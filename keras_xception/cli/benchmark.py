"""`keras-xception benchmark`: the fast path against plain Keras.

The same benchmark as `scripts/benchmark.py`; see `keras_xception.benchmark`
for what is measured and how. Like every `keras-xception` command it runs
with TensorFlow's oneDNN kernels on unless `TF_ENABLE_ONEDNN_OPTS` is set.
"""

from __future__ import annotations

from keras_xception.cli._args import positive_int


def add_parser(subparsers):
    from keras_xception import benchmark

    parser = subparsers.add_parser(
        "benchmark",
        help="compare optimize_for_inference with keras.applications.Xception",
        description="Alternate keras.applications.Xception(...).predict and "
        "this package's fast path, each in its own process, and print img/s, "
        "latency, ratios, roofline share and peak memory.",
    )
    # Counts are checked as they are parsed, so `--rounds 0` fails at once
    # with one line naming the option.
    benchmark.add_arguments(parser, count=positive_int)
    parser.set_defaults(run=run)


def run(args) -> int:
    from keras_xception import benchmark
    if args.json is not None:
        # Checked before minutes of measuring, not when the results are in.
        check_json_path(args.json)
    return benchmark.main_from_args(args)


def check_json_path(path):
    """Checks that the results could be written to `path`.

    Raises:
        keras_xception.errors.ConfigError: If `path` is a folder or something
            else that is not a regular file, or its folder cannot be written.
    """
    import os

    from keras_xception.errors import ConfigError
    from keras_xception.fileio import check_parent

    full = check_parent(path, what="--json")
    if full.is_dir():
        raise ConfigError(
            "--json names a folder; give a file to write the results to. "
            f"Received: --json {path}"
        )
    if os.path.lexists(full) and not full.is_file():
        raise ConfigError(
            "--json names something that is not a regular file; give a file "
            f"to write the results to. Received: --json {path}"
        )
