"""`keras-xception benchmark`: the fast path against plain Keras.

The same benchmark as `scripts/benchmark.py`; see `keras_xception.benchmark`
for what is measured and how. Like every `keras-xception` command it runs
with TensorFlow's oneDNN kernels on unless `TF_ENABLE_ONEDNN_OPTS` is set.
"""

from __future__ import annotations


def add_parser(subparsers):
    from keras_xception import benchmark

    parser = subparsers.add_parser(
        "benchmark",
        help="compare optimize_for_inference with keras.applications.Xception",
        description="Alternate keras.applications.Xception(...).predict and "
        "this package's fast path, each in its own process, and print img/s, "
        "latency, ratios, roofline share and peak memory.",
    )
    benchmark.add_arguments(parser)
    parser.set_defaults(run=run)


def run(args) -> int:
    from keras_xception import benchmark

    return benchmark.main_from_args(args)
