"""`keras-xception classify`: ImageNet predictions for image files.

Files and folders are expanded by `keras_xception.images.find_images` and
decoded by `keras_xception.images.iter_batches`, the same decoding as the
Python API and training: a few threads decode a bounded number of images
ahead of the model, so memory stays flat however many files there are.
Resizing is antialiased bilinear (`keras_xception.images.RESIZE_METHOD`):
Keras's `load_img` defaults to nearest neighbour, which aliases fine texture
when a photo is shrunk to 299x299 and costs accuracy.

Output goes to stdout and is only results: a table, `--json` (one JSON list,
written at the end) or `--jsonl` (one JSON object per image, written as each
is classified). Paths in JSON are strings; a file name that is not valid
UTF-8 keeps its bytes as lone surrogates (`"\\udce9"`, Python's
`surrogateescape`), which Python's `json` reads back to a name `open` and
`os.fsencode` accept. The table shows such bytes as `\\xe9`.

Diagnostics go to stderr. A path that is missing, a dangling or looping
link, a folder with no images, or a file that cannot be decoded (empty,
truncated, not an image, over the pixel limit) is named there on one line;
the others are still classified and the exit status is 1 at the end.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys

from keras_xception.cli._args import positive_int
from keras_xception.cli._inputs import Failures, capped_batch_size, printable_stdout
from keras_xception.images import IMAGE_EXTENSIONS

# The largest --batch-size used: the model's activations grow with the batch
# (about 30 MiB per 299x299 image: a peak of 1.3 GiB at 8, 2.3 GiB at 32 and
# 3.7 GiB at 64, by scripts/measure_memory.py), while throughput on a CPU was
# the same at 8, 32 and 64. A larger value is lowered to this, with a note on
# stderr.
MAX_BATCH_SIZE = 32

TOP_MAX = 1000


def add_parser(subparsers):
    parser = subparsers.add_parser(
        "classify",
        help="print ImageNet predictions for image files or folders",
        description="Classify images with Xception. A folder is searched "
        "recursively for files with the extensions "
        + ", ".join(IMAGE_EXTENSIONS) + " (hidden files and folders are "
        "skipped); a file named on the command line is read whatever its "
        "name. Results go to stdout; unreadable or missing files are named "
        "on stderr and skipped, and the exit status is then 1.",
    )
    parser.add_argument("paths", nargs="+", metavar="PATH",
                        help="image file or folder")
    parser.add_argument("--weights", default="imagenet",
                        help="'imagenet' (default; downloaded and verified once), "
                        "the path of a weights file with the classifier top, or "
                        "an http(s) URL of one")
    parser.add_argument("--top", type=positive_int, default=5, metavar="K",
                        help=f"predictions per image, 1 to {TOP_MAX} (default: 5)")
    output = parser.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true",
                        help="print one JSON list of {path, predictions} at the end")
    output.add_argument("--jsonl", action="store_true",
                        help="print one JSON object {path, predictions} per line, "
                        "as each image is classified")
    parser.add_argument("--batch-size", type=positive_int, default=8, metavar="N",
                        help="images per forward pass (default: 8; at most "
                        f"{MAX_BATCH_SIZE}, a larger value is lowered to it)")
    parser.add_argument("--max-pixels", type=positive_int, default=None, metavar="N",
                        help="refuse images larger than N pixels (width x height; "
                        "default: $KERAS_XCEPTION_MAX_PIXELS, else 178956970, "
                        "Pillow's decompression-bomb limit)")
    parser.add_argument("--precision", choices=("auto", "float32", "bfloat16"),
                        default="auto",
                        help="compute precision (default: auto: bfloat16 only "
                        "where the CPU computes it natively (avx512_bf16 or "
                        "amx_bf16) and a probe check against float32 holds, "
                        "else float32; outputs are always float32)")
    # `--output DIR` turns classify into a batch job (Parquet results,
    # resumable, local or on Ray); its other options are added alongside.
    from keras_xception.cli._batch import add_batch_arguments

    add_batch_arguments(parser)
    parser.set_defaults(run=run)


def display_path(path) -> str:
    """A path as text for the table: bytes that are not UTF-8 shown as `\\xNN`."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def _record(path, predictions) -> dict:
    return {
        "path": os.fsdecode(path),
        "predictions": [
            {"synset": synset, "label": label, "score": score}
            for synset, label, score in predictions
        ],
    }


def _table(path, predictions) -> str:
    lines = [display_path(path)]
    for rank, (synset, label, score) in enumerate(predictions, start=1):
        lines.append(f"  {rank:>2}. {score:7.2%}  {label:<30} {synset}")
    return "\n".join(lines) + "\n"


def find_files(paths, on_error):
    """The image files under `paths`; a folder without any is an error.

    Args:
        paths: Files and folders from the command line.
        on_error: Called as `on_error(path, message)` for each problem.

    Returns:
        The files, in command-line order.
    """
    from keras_xception.images import find_given

    return [file for path in paths for file in find_given(path, on_error=on_error)]


def classify(files, weights, *, top, batch_size, max_pixels, on_error,
             precision="auto"):
    """Classifies `files`; yields `(path, [(synset, label, score), ...])`.

    Images are streamed: at most a few batches are decoded at any time.
    Files that cannot be decoded are passed to `on_error(path, message)`.
    The first batch is decoded before the model is built, so a run whose
    files are all unreadable ends in a moment, without building it.
    """
    import itertools

    from keras_xception.architecture import DEFAULT_SIZE
    from keras_xception.images import iter_batches
    from keras_xception.preprocessing import decode_predictions, preprocess_input

    # A model with the classifier top takes DEFAULT_SIZE x DEFAULT_SIZE images.
    size = (DEFAULT_SIZE, DEFAULT_SIZE)
    batches = iter_batches(
        files, target_size=size, batch_size=batch_size,
        preprocess=preprocess_input, on_error=on_error, max_pixels=max_pixels,
    )
    with contextlib.closing(batches):
        first = next(batches, None)
        if first is None:
            return
        from keras_xception.inference import optimize_for_inference
        from keras_xception.model import Xception

        model = optimize_for_inference(Xception(weights=weights), precision)
        for paths, images in itertools.chain([first], batches):
            first = None  # Drop the reference so the batch can be freed.
            probs = model.predict(images, batch_size=len(paths), verbose=0)
            del images
            yield from zip(paths, decode_predictions(probs, top=top))


def run(args) -> int:
    if args.output is not None:
        from keras_xception.cli._batch import run_batch

        return run_batch(args, "classify")

    from keras_xception.batch.sources import DEFAULT_PATH_COLUMN, DEFAULT_SHARD_SIZE
    from keras_xception.errors import ConfigError
    from keras_xception.images import max_pixels_limit

    batch_only = {
        "--engine": args.engine != "auto",
        "--address": args.address is not None,
        "--model": args.model is not None,
        "--path-column": args.path_column != DEFAULT_PATH_COLUMN,
        "--shard-size": args.shard_size != DEFAULT_SHARD_SIZE,
        "--overwrite": args.overwrite,
    }
    given = [option for option, set_ in batch_only.items() if set_]
    if given:
        raise ConfigError(
            f"{', '.join(given)} {'applies' if len(given) == 1 else 'apply'} only to a "
            "batch job: add --output DIR "
            "to write Parquet results there, or leave them out."
        )

    if args.top > TOP_MAX:
        raise ConfigError(f"--top must be from 1 to {TOP_MAX}. Received: --top {args.top}")
    max_pixels = max_pixels_limit(args.max_pixels)
    batch_size = capped_batch_size(args.batch_size, MAX_BATCH_SIZE, "classify")
    printable_stdout()
    on_error = Failures()

    files = find_files(args.paths, on_error)
    if not files:
        if not on_error.count:
            print("error: no image files to classify", file=sys.stderr)
        return 1

    # Fetch (or find) the weights before TensorFlow is imported: a missing
    # file or an empty cache offline fails in a moment, with only its message.
    from keras_xception.weights import resolve

    weights = str(resolve(args.weights, include_top=True, progress=sys.stderr))
    if not weights.endswith(".keras"):
        # A weights file of the wrong kind is named now, with h5py alone,
        # before any image is decoded or TensorFlow imported.
        from keras_xception.weights.validate import inspect

        inspect(weights, include_top=True)

    # images.decode applies the pixel limit itself; Pillow's own
    # process-wide check would refuse a raised --max-pixels and warn below it.
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = None

    results = []
    for path, predictions in classify(
        files, weights, top=args.top, batch_size=batch_size,
        max_pixels=max_pixels, on_error=on_error, precision=args.precision,
    ):
        if args.json:
            results.append(_record(path, predictions))
        elif args.jsonl:
            sys.stdout.write(json.dumps(_record(path, predictions)) + "\n")
            sys.stdout.flush()
        else:
            sys.stdout.write(_table(path, predictions))
            sys.stdout.flush()
    if args.json:
        json.dump(results, sys.stdout, indent=2)
        sys.stdout.write("\n")
        sys.stdout.flush()
    # Each unreadable input has had its one line on stderr; no summary line.
    return 1 if on_error.count else 0
