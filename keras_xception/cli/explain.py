"""`keras-xception explain`: Grad-CAM overlays for image files.

For each image the command writes one PNG into `--output`: the photo at its
original size (as displayed, after its EXIF orientation) with the Grad-CAM
heatmap of the explained class painted over it (`keras_xception.explain`).

Files and folders are expanded by `keras_xception.images.find_images` and
decoded by `keras_xception.images.iter_batches`, as for `classify`. The PNG
of `PHOTO.jpg` is `PHOTO.png`; inside a folder given on the command line it
keeps its path below that folder (`photos/` with `cups/1.jpg` gives
`OUT/cups/1.png`). A name already taken in this run (two `1.jpg` in different
folders given separately, or `1.jpg` beside `1.png`; compared ignoring case)
gets `-2`, `-3`, ... before `.png`. With `--top K` (K > 1) the names end in
`.top1.png` ... `.topK.png`. Every PNG is written atomically; one already in
`--output` is replaced.

Results go to stdout: a table, `--json` (one JSON list at the end) or
`--jsonl` (one JSON object per explained class, as each is written). Each
result is `{"path", "class_index", "class", "score", "overlay"}`: `class` is
the ImageNet label or the class name saved in the `.keras` file (`null`
without one), `score` the class's probability (the
score rule of `keras_xception.source`), `overlay` the
PNG. The model is read by `keras_xception.source` and pixels prepared by
its input rule (`--preprocess` overrides it); the work is
`keras_xception.pipelines.explain`. Diagnostics go to stderr: a path that is missing, a folder with no
images or a file that cannot be decoded is named there in one line, the
others are still explained, and the exit status is then 1.
"""

from __future__ import annotations

import os
import pathlib

from keras_xception.checks import MAX_BATCH_SIZE
from keras_xception.cli._args import fraction, positive_int
from keras_xception.cli._inputs import Results, start
from keras_xception.images import IMAGE_EXTENSIONS
from keras_xception.pipelines import DEFAULT_EXPLAIN_BATCH_SIZE as DEFAULT_BATCH_SIZE

PREPROCESS_CHOICES = ("auto", "xception", "none")


def add_parser(subparsers):
    parser = subparsers.add_parser(
        "explain",
        help="write Grad-CAM overlays: where in each image a class comes from",
        description="Explain predictions with Grad-CAM. For each image, write "
        "a PNG into --output: the photo at its own size with a heatmap of the "
        "regions that raise the class's score (viridis colours: yellow is "
        "high). A folder is searched recursively for files with the "
        "extensions " + ", ".join(IMAGE_EXTENSIONS) + " (hidden files and "
        "folders are skipped). Results go to stdout; unreadable or missing "
        "files are named on stderr and skipped, and the exit status is then 1.",
    )
    parser.add_argument("paths", nargs="+", metavar="PATH",
                        help="image file or folder")
    parser.add_argument("--output", "-o", required=True, metavar="DIR",
                        help="folder for the PNG overlays (made if missing)")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--model", metavar="PATH.keras",
                        help="a fine-tuned model file (e.g. from `fine-tune`) "
                        "with an Xception base, instead of the ImageNet model")
    source.add_argument("--weights", default="imagenet",
                        help="ImageNet model weights, as for classify: 'imagenet' "
                        "(default), a weights file with the classifier top, "
                        "or an http(s) URL of one")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--class", dest="class_", metavar="INDEX_OR_NAME",
                       help="the class to explain in every image: its index, "
                       "its name (an ImageNet label or synset, or a class name "
                       "saved in the model), or '#N' (quoted) for index N where a "
                       "class is named by a number (default: each image's top class)")
    which.add_argument("--top", type=positive_int, default=1, metavar="K",
                       help="explain each image's K highest-scoring classes, "
                       "one PNG each (default: 1)")
    output = parser.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true",
                        help="print one JSON list of results at the end")
    output.add_argument("--jsonl", action="store_true",
                        help="print one JSON object per result, as each PNG "
                        "is written")
    parser.add_argument("--layer", metavar="NAME", default=None,
                        help="the Xception layer to explain (default: "
                        "block14_sepconv2_act, the last convolutional block)")
    parser.add_argument("--alpha", type=fraction, default=0.4, metavar="A",
                        help="the heatmap's weight over the photo, 0 to 1 "
                        "(default: 0.4)")
    parser.add_argument("--preprocess", choices=PREPROCESS_CHOICES, default="auto",
                        help="how pixels are scaled for --model: 'xception' "
                        "(preprocess_input, to [-1, 1]), 'none' (pixels in "
                        "[0, 255], for a model that scales them itself) or "
                        "'auto' (default: 'none' if a Rescaling or "
                        "Normalization layer comes before its Xception base, "
                        "as in fine-tune's models, else 'xception'; the rule "
                        "every command uses)")
    parser.add_argument("--batch-size", type=positive_int, default=DEFAULT_BATCH_SIZE,
                        metavar="N",
                        help=f"images per pass (default: {DEFAULT_BATCH_SIZE}; at "
                        f"most {MAX_BATCH_SIZE}, a larger value is lowered to it)")
    parser.add_argument("--max-pixels", type=positive_int, default=None, metavar="N",
                        help="refuse images larger than N pixels (width x height; "
                        "default: $KERAS_XCEPTION_MAX_PIXELS, else 178956970)")
    parser.set_defaults(run=run)


def _check_output(text) -> pathlib.Path:
    from keras_xception.errors import ConfigError
    from keras_xception.fileio import check_output_folder

    out = check_output_folder(text, what="--output")
    if out.exists() and not out.is_dir():
        raise ConfigError(
            f"--output must be a folder; {os.fsdecode(out)!r} is a file. "
            "Choose another path."
        )
    return pathlib.Path(text).expanduser()


def _table(record) -> str:
    from keras_xception.cli._inputs import display_path

    index = record["class_index"]
    name = f"class {index}" if record["class"] is None else f"{record['class']} ({index})"
    return (f"{display_path(record['path'])}\n"
            f"  {record['score']:7.2%}  {name}  -> {display_path(record['overlay'])}\n")


def run(args) -> int:
    from keras_xception import pipelines

    # Everything that can be checked without TensorFlow is, first.
    out = _check_output(args.output)
    ready = start(args, "explain", pipelines.find_jobs)
    if ready is None:
        return 1
    src, top = ready.source, ready.top
    if src.kind == "int8":
        from keras_xception.errors import ConfigError

        raise ConfigError(
            f"{src.given} is an int8 model, which has no gradients for Grad-CAM; "
            "explain the float32 model it was quantized from."
        )
    class_index = None
    if args.class_ is not None and src.classes is not None:
        class_index = pipelines.resolve_class(args.class_, src)
    loaded = src.load()
    if args.class_ is not None and class_index is None:  # Known once loaded.
        class_index = pipelines.resolve_class(args.class_, src, loaded.classes)
    if args.preprocess != "auto":
        loaded.rescales_itself = args.preprocess == "none"
    from keras_xception.explain import find_layer

    find_layer(loaded.model, args.layer)
    out.mkdir(parents=True, exist_ok=True)

    results = Results(args, _table)
    cleaned = set()  # The folders rid of a killed run's temporaries.
    for job, rank, index, score, picture in pipelines.explain(
        ready.found, loaded, class_index=class_index, top=top, layer=args.layer,
        alpha=args.alpha, batch_size=ready.batch_size, max_pixels=ready.max_pixels,
        on_error=ready.on_error,
    ):
        target = out / pipelines.png_name(job, rank, top)
        _write_png(target, picture, cleaned)
        record = {
            "path": os.fsdecode(job.path),
            "class_index": index,
            "class": src.class_names[index] if src.class_names else None,
            "score": score,
            "overlay": os.fsdecode(target),
        }
        results.add(record)
        del picture  # The photo's memory, before the next one is decoded.
    results.close()
    return 1 if ready.on_error.count else 0


def _write_png(path: pathlib.Path, picture, cleaned: set) -> None:
    """Writes `path` atomically; first, once per folder, removes the
    temporaries a killed run left there (`fileio.remove_dead_temporaries`)."""
    from keras_xception.errors import ConfigError
    from keras_xception.fileio import remove_dead_temporaries
    from keras_xception.pipelines import write_png

    try:
        if path.parent not in cleaned:  # (A folder not made yet has none.)
            remove_dead_temporaries(path, any_name=True)
            cleaned.add(path.parent)
        write_png(path, picture)
    except OSError as err:
        raise ConfigError(
            f"Cannot write {os.fsdecode(path)!r}: {err.strerror or err}"
        ) from None
