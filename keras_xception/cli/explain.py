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
without one), `score` the model's probability for the class, `overlay` the
PNG. Diagnostics go to stderr: a path that is missing, a folder with no
images or a file that cannot be decoded is named there in one line, the
others are still explained, and the exit status is then 1.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import sys

from keras_xception.cli._args import positive_int
from keras_xception.cli._inputs import Failures, capped_batch_size, printable_stdout
from keras_xception.images import IMAGE_EXTENSIONS

# Images per forward and backward pass; a larger --batch-size is lowered to
# MAX_BATCH_SIZE. The backward pass keeps the activations after the explained
# layer only, so memory stays close to classify's at the same batch size.
DEFAULT_BATCH_SIZE = 8
MAX_BATCH_SIZE = 32

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
                       "saved in the model) (default: each image's top class)")
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
    parser.add_argument("--alpha", type=_alpha, default=0.4, metavar="A",
                        help="the heatmap's weight over the photo, 0 to 1 "
                        "(default: 0.4)")
    parser.add_argument("--preprocess", choices=PREPROCESS_CHOICES, default="auto",
                        help="how pixels are scaled for --model: 'xception' "
                        "(preprocess_input, to [-1, 1]), 'none' (pixels in "
                        "[0, 255], for a model that scales them itself) or "
                        "'auto' (default: 'none' if the model has a Rescaling "
                        "layer before its Xception base, as fine-tune's "
                        "models do, else 'xception')")
    parser.add_argument("--batch-size", type=positive_int, default=DEFAULT_BATCH_SIZE,
                        metavar="N",
                        help=f"images per pass (default: {DEFAULT_BATCH_SIZE}; at "
                        f"most {MAX_BATCH_SIZE}, a larger value is lowered to it)")
    parser.add_argument("--max-pixels", type=positive_int, default=None, metavar="N",
                        help="refuse images larger than N pixels (width x height; "
                        "default: $KERAS_XCEPTION_MAX_PIXELS, else 178956970)")
    parser.set_defaults(run=run)


def _alpha(text):
    import argparse

    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be a number from 0 to 1. Received: {text!r}")
    return value


# --- inputs and output names -------------------------------------------------


class Job(os.PathLike):
    """An image to explain: its path (for `iter_batches`) and its PNG name."""

    def __init__(self, path: pathlib.Path, name: pathlib.PurePath):
        self.path = path
        self.name = name  # The PNG's path relative to --output, without ".png".

    def __fspath__(self):
        return os.fspath(self.path)


def find_jobs(paths, on_error) -> list[Job]:
    """The images under `paths`, each with a PNG name of its own.

    Args:
        paths: Files and folders from the command line.
        on_error: Called as `on_error(path, message)` for each problem (a
            missing path, a folder without images, ...).

    Returns:
        The jobs, in command-line order.
    """
    from keras_xception.images import find_given

    jobs, taken = [], set()
    for given in paths:
        found = find_given(given, on_error=on_error)
        folder = os.path.isdir(given)
        for path in found:
            relative = path.relative_to(given) if folder else pathlib.PurePath(path.name)
            stem = relative.with_suffix("")
            name, count = stem, 1
            while str(name).casefold() in taken:
                count += 1
                name = stem.with_name(f"{stem.name}-{count}")
            taken.add(str(name).casefold())
            jobs.append(Job(path, name))
    return jobs


def png_name(job: Job, rank: int, top: int) -> pathlib.PurePath:
    """The PNG for `job`'s `rank`-th class (1-based) of `top`."""
    suffix = f".top{rank}.png" if top > 1 else ".png"
    return job.name.with_name(job.name.name + suffix)


# --- the model and its classes -------------------------------------------------


def load_model(args):
    """The model, its class names (or None) and whether it wants pixels in [0, 255].

    Raises:
        keras_xception.errors.WeightsError: If the file cannot be loaded.
    """
    from keras_xception.errors import WeightsError

    if args.model is None:
        from keras_xception.model import Xception
        from keras_xception.preprocessing import imagenet_classes
        from keras_xception.weights import resolve

        weights = str(resolve(args.weights, include_top=True, progress=sys.stderr))
        labels = tuple(label for _, label in imagenet_classes())
        synsets = tuple(synset for synset, _ in imagenet_classes())
        return Xception(weights=weights), labels, synsets, False

    from keras_xception.cli.export import check_keras_file
    from keras_xception.training.saving import load_classifier

    path = check_keras_file(args.model)
    try:
        model = load_classifier(path)
    except (OSError, ValueError, TypeError, KeyError, EOFError) as err:
        message = " ".join(str(err).split())[:300]
        raise WeightsError(f"Cannot load the Keras model {str(path)!r}: {message}") from None
    names = getattr(model, "class_names", None)
    raw = {"none": True, "xception": False}.get(args.preprocess)
    if raw is None:
        raw = _scales_itself(model)
    return model, names, None, raw


def _scales_itself(model) -> bool:
    """Whether a `Rescaling` layer comes before the Xception base in `model`."""
    import keras

    from keras_xception.explain import find_layer

    path, _ = find_layer(model)
    outer = path[-2] if len(path) > 1 else None
    if outer is None:
        return False
    for layer in outer.layers:
        if layer is path[-1]:
            return False
        if isinstance(layer, keras.layers.Rescaling):
            return True
    return False


def resolve_class(text, count, names, synsets) -> int:
    """The class index `--class` names.

    Raises:
        keras_xception.errors.ConfigError: If it names no class, or more than one.
    """
    from keras_xception.errors import ConfigError

    text = text.strip()
    if text.lstrip("-").isdigit():
        index = int(text)
        if not 0 <= index < count:
            raise ConfigError(
                f"--class must be a class index from 0 to {count - 1}, or a class "
                f"name. Received: --class {text!r}"
            )
        return index
    for table in (synsets, names):
        if table:
            matches = [i for i, name in enumerate(table) if name == text]
            if not matches:
                matches = [i for i, name in enumerate(table)
                           if name.casefold() == text.casefold()]
            if len(matches) == 1:
                return matches[0]
            if len(matches) > 1:
                raise ConfigError(
                    f"--class {text!r} names {len(matches)} classes "
                    f"({', '.join(map(str, matches))}); give the index instead"
                    + (", or the synset" if synsets else "")
                )
    if not names:
        raise ConfigError(
            f"The model has no class names saved; give --class as an index "
            f"from 0 to {count - 1}. Received: --class {text!r}"
        )
    raise ConfigError(
        f"--class {text!r} is not a class of this model; give an index from 0 "
        f"to {count - 1} or one of its class names (e.g. {names[0]!r})"
    )


# --- running ---------------------------------------------------------------------


def explain(jobs, model, *, raw, classes, top, layer, alpha, batch_size,
            max_pixels, on_error):
    """Explains `jobs`; yields `(job, rank, class_index, score, overlay)`.

    `overlay` is the uint8 picture at the photo's size. `classes` is a class
    index for every image, or `None` for the `top` highest-scoring ones.
    Files that cannot be decoded are passed to `on_error(path, message)`.
    """
    import numpy as np

    from keras_xception.errors import ImageError
    from keras_xception.explain import class_scores, explain_batch, overlay
    from keras_xception.images import decode, iter_batches
    from keras_xception.preprocessing import preprocess_input

    height, width = (int(d) if d else 299 for d in model.inputs[0].shape[1:3])
    batches = iter_batches(
        jobs, target_size=(height, width), batch_size=batch_size,
        preprocess=None if raw else preprocess_input, on_error=on_error,
        max_pixels=max_pixels,
    )
    with contextlib.closing(batches):
        for batch_jobs, images in batches:
            first = explain_batch(model, images, classes, layer)
            scores = class_scores(model, first.logits)
            if classes is None:
                ranked = np.argsort(-first.logits, axis=-1, kind="stable")[:, :top]
            else:
                ranked = first.class_indices[:, None]
            heatmaps = [first.heatmaps]
            for rank in range(1, ranked.shape[1]):
                heatmaps.append(explain_batch(model, images, ranked[:, rank], layer).heatmaps)
            del images
            for i, job in enumerate(batch_jobs):
                try:
                    photo = decode(job, target_size=None, max_pixels=max_pixels)
                except ImageError as err:
                    on_error(job, str(err))
                    continue
                for rank, index in enumerate(ranked[i]):
                    picture = overlay(photo, heatmaps[rank][i], alpha)
                    yield job, rank + 1, int(index), float(scores[i, index]), picture
                del photo


def write_png(path: pathlib.Path, picture) -> None:
    """Writes `picture` (uint8 RGB) as a PNG, atomically."""
    from PIL import Image

    from keras_xception.errors import ConfigError
    from keras_xception.fileio import atomic_write

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(path, "wb") as f:
            Image.fromarray(picture, "RGB").save(f, format="PNG")
    except OSError as err:
        raise ConfigError(
            f"Cannot write {os.fsdecode(path)!r}: {err.strerror or err}"
        ) from None


def _check_output(text) -> pathlib.Path:
    from keras_xception.errors import ConfigError
    from keras_xception.fileio import check_parent

    out = check_parent(text, what="--output")
    if out.exists() and not out.is_dir():
        raise ConfigError(
            f"--output must be a folder; {os.fsdecode(out)!r} is a file. "
            "Choose another path."
        )
    return pathlib.Path(text).expanduser()


def _table(record) -> str:
    from keras_xception.cli.classify import display_path

    index = record["class_index"]
    name = f"class {index}" if record["class"] is None else f"{record['class']} ({index})"
    return (f"{display_path(record['path'])}\n"
            f"  {record['score']:7.2%}  {name}  -> {display_path(record['overlay'])}\n")


def run(args) -> int:
    from keras_xception.errors import ConfigError
    from keras_xception.images import max_pixels_limit

    out = _check_output(args.output)
    max_pixels = max_pixels_limit(args.max_pixels)
    batch_size = capped_batch_size(args.batch_size, MAX_BATCH_SIZE, "explain")
    printable_stdout()
    on_error = Failures()

    jobs = find_jobs(args.paths, on_error)
    if not jobs:
        if not on_error.count:
            print("error: no image files to explain", file=sys.stderr)
        return 1

    model, names, synsets, raw = load_model(args)
    from keras_xception.explain import find_layer

    find_layer(model, args.layer)
    count = model.outputs[0].shape[-1]
    if args.top > count:
        raise ConfigError(
            f"--top must be from 1 to {count} (the model's classes). "
            f"Received: --top {args.top}"
        )
    classes = None
    if args.class_ is not None:
        classes = resolve_class(args.class_, count, names, synsets)

    # images.decode applies the pixel limit itself (see classify).
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = None
    out.mkdir(parents=True, exist_ok=True)

    results = []
    for job, rank, index, score, picture in explain(
        jobs, model, raw=raw, classes=classes, top=args.top, layer=args.layer,
        alpha=args.alpha, batch_size=batch_size, max_pixels=max_pixels,
        on_error=on_error,
    ):
        target = out / png_name(job, rank, args.top)
        write_png(target, picture)
        record = {
            "path": os.fsdecode(job.path),
            "class_index": index,
            "class": names[index] if names else None,
            "score": score,
            "overlay": os.fsdecode(target),
        }
        if args.json:
            results.append(record)
        elif args.jsonl:
            sys.stdout.write(json.dumps(record) + "\n")
            sys.stdout.flush()
        else:
            sys.stdout.write(_table(record))
            sys.stdout.flush()
    if args.json:
        json.dump(results, sys.stdout, indent=2)
        sys.stdout.write("\n")
        sys.stdout.flush()
    return 1 if on_error.count else 0
