"""`keras-xception classify`: the classes of image files, by ImageNet or a fine-tuned model.

The model comes from `--weights` (ImageNet's) or `--model` (a fine-tuned
`.keras` file, with its class names), read by `keras_xception.source` as
every command reads it; the work is `keras_xception.pipelines.classify`.
Scores are probabilities by the source's score rule; JSON records name it
(`score_rule`), and the table notes it on stderr when it is not the model's
own softmax.

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

import os
import sys

from keras_xception.checks import MAX_BATCH_SIZE, MAX_TOP
from keras_xception.cli._args import positive_int
from keras_xception.cli._inputs import Results, display_path, start
from keras_xception.images import IMAGE_EXTENSIONS


def add_parser(subparsers):
    parser = subparsers.add_parser(
        "classify",
        help="print the classes of image files or folders",
        description="Classify images with Xception: ImageNet's 1000 classes, "
        "or a fine-tuned model's own with --model. A folder is searched "
        "recursively for files with the extensions "
        + ", ".join(IMAGE_EXTENSIONS) + " (hidden files and folders are "
        "skipped); a file named on the command line is read whatever its "
        "name. Results go to stdout; unreadable or missing files are named "
        "on stderr and skipped, and the exit status is then 1.",
    )
    parser.add_argument("paths", nargs="+", metavar="PATH",
                        help="image file or folder")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--weights", default="imagenet",
                        help="'imagenet' (default; downloaded and verified once), "
                        "the path of a weights file with the classifier top, or "
                        "an http(s) URL of one")
    source.add_argument("--model", metavar="PATH.keras",
                        help="a fine-tuned .keras model (from `fine-tune`, or any "
                        "model on an Xception base), or an int8 folder from "
                        "`quantize`, instead of --weights; its class names are used")
    parser.add_argument("--top", type=positive_int, default=None, metavar="K",
                        help=f"predictions per image, 1 to {MAX_TOP} and at most "
                        "the model's classes (default: 5, or all of fewer)")
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
    parser.add_argument("--calibration", metavar="DIR", default=None,
                        help="with --precision int8: images to calibrate the int8 "
                        "model on (quantized once, then read from the Keras cache; "
                        "`keras-xception quantize` writes it to a folder instead)")
    parser.add_argument("--precision", choices=("auto", "float32", "bfloat16", "int8"),
                        default=None,
                        help="compute precision (default: auto, or float32 with "
                        "--output: bfloat16 only where the CPU computes it "
                        "natively (avx512_bf16 or amx_bf16) and a probe check "
                        "against float32 holds, else float32; outputs are "
                        "always float32; int8 needs --calibration and the int8 "
                        "extra, and is not for --output)")
    # `--output DIR` turns classify into a batch job (Parquet results,
    # resumable, local or on Ray); its other options are added alongside.
    from keras_xception.cli._batch import add_batch_arguments

    add_batch_arguments(parser)
    parser.set_defaults(run=run)


def _record(path, predictions, rule) -> dict:
    return {
        "path": os.fsdecode(path),
        "predictions": [
            {"class_index": p.class_index, "label": p.name, "synset": p.synset,
             "score": p.score}
            for p in predictions
        ],
        "score_rule": rule,
    }


def _table(record) -> str:
    lines = [display_path(record["path"])]
    for rank, p in enumerate(record["predictions"], start=1):
        if p["synset"] is not None:  # ImageNet: its label and synset.
            name, where = p["label"], p["synset"]
        elif p["label"] == str(p["class_index"]):  # No names saved: the index.
            name, where = f"class {p['class_index']}", ""
        else:
            name, where = p["label"], f"class {p['class_index']}"
        lines.append(f"  {rank:>2}. {p['score']:7.2%}  {name:<30} {where}".rstrip())
    return "\n".join(lines) + "\n"


def run(args) -> int:
    from keras_xception.cli._batch import check_batch_only

    from keras_xception.inference.quantize import check_options

    check_options(args.precision, args.calibration, batch=args.output is not None)
    if args.output is not None:
        from keras_xception.cli._batch import run_batch

        return run_batch(args, "classify")
    check_batch_only(args)

    from keras_xception import pipelines
    from keras_xception.source import MODEL_SOFTMAX

    ready = start(args, "classify", pipelines.find_files)
    if ready is None:
        return 1
    if ready.source.kind == "int8":  # Before the model is loaded.
        from keras_xception.inference.int8_folder import check_precision

        check_precision(ready.source.given, args.precision or "auto", args.calibration)

    rule = None

    def on_model(loaded):
        nonlocal rule
        rule = loaded.score_rule
        if rule != MODEL_SOFTMAX and not (args.json or args.jsonl):
            print(f"note: scores are {rule}", file=sys.stderr)

    results = Results(args, _table)
    for path, predictions in pipelines.classify(
        ready.found, ready.source, top=ready.top, batch_size=ready.batch_size,
        max_pixels=ready.max_pixels, on_error=ready.on_error,
        precision=args.precision or "auto", on_model=on_model,
        calibration=args.calibration,
    ):
        results.add(_record(path, predictions, rule))
    results.close()
    # Each unreadable input has had its one line on stderr; no summary line.
    return 1 if ready.on_error.count else 0
