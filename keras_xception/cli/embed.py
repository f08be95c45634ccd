"""`keras-xception embed`: 2048-d Xception embeddings of image collections, as Parquet.

Each readable image gets one row `path` (string), `embedding` (2048 float32,
a fixed-size list): the output of `Xception(include_top=False,
pooling="avg")` on the image decoded and preprocessed as `classify` does.
See `keras_xception.cli._batch` for the options, output and exit status.
"""

from __future__ import annotations

from keras_xception.images import IMAGE_EXTENSIONS


def add_parser(subparsers):
    from keras_xception.cli._batch import add_batch_arguments

    parser = subparsers.add_parser(
        "embed",
        help="write Xception embeddings of images to a Parquet dataset",
        description="Compute the 2048-d Xception embedding (global average "
        "pooling of the base) of every image in SRC: image files, folders "
        "(searched recursively for " + ", ".join(IMAGE_EXTENSIONS) + "), or "
        ".txt/.csv/.parquet lists of paths. Results go into --output DIR as "
        "Parquet files (path, embedding); unreadable inputs go to "
        "DIR/_errors.parquet and make the exit status 1. A rerun with the "
        "same DIR finishes an interrupted run.",
    )
    parser.add_argument("paths", nargs="+", metavar="SRC",
                        help="image file, folder, or .txt/.csv/.parquet list of paths")
    add_batch_arguments(parser)
    parser._option_string_actions["--output"].required = True
    parser.set_defaults(run=run)


def run(args) -> int:
    from keras_xception.cli._batch import run_batch

    return run_batch(args, "embed")
