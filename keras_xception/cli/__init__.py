"""The `keras-xception` command line.

Each subcommand lives in a module of this package that defines
`add_parser(subparsers)` and `run(args) -> int`. Expected failures
(`keras_xception.errors.XceptionError`) print `error: <message>` on stderr and
exit with status 1, without a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

# Subcommand modules, in the order `--help` lists them.
COMMANDS = ("classify", "weights", "benchmark", "export", "fine_tune")


def _configure_runtime() -> None:
    """Set TensorFlow's environment before anything imports it.

    oneDNN's fp32 kernels roughly double matmul and convolution throughput on
    AVX2 CPUs where TensorFlow leaves them off by default; the command line
    turns them on unless the user has set `TF_ENABLE_ONEDNN_OPTS` already.
    TensorFlow's C++ start-up logging is quietened the same way.
    """
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def build_parser() -> argparse.ArgumentParser:
    from keras_xception import __version__

    parser = argparse.ArgumentParser(
        prog="keras-xception",
        description="Xception image models for Keras 3: classify, manage "
        "weights, benchmark, export and fine-tune.",
    )
    parser.add_argument(
        "--version", action="version", version=f"%(prog)s {__version__}"
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    for name in COMMANDS:
        module = importlib.import_module(f"keras_xception.cli.{name}")
        module.add_parser(subparsers)
    return parser


def main(argv=None) -> int:
    _configure_runtime()
    from keras_xception.errors import XceptionError

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except XceptionError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
