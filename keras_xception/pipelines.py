"""Classify and explain image files: the library functions behind the commands.

    from keras_xception import pipelines, source

    src = source.open_source("imagenet", need_top=True)
    for path, predictions in pipelines.classify(["photos/"], src, top=3):
        ...

Both stream: a few threads decode a bounded number of images ahead of the
model (`keras_xception.images.iter_batches`), so memory stays flat however
many files there are. Images are resized to the source's input size with
antialiased bilinear filtering and prepared by the source's input rule
(`keras_xception.source`). The first batch is decoded before the model is
built, so a run whose files are all unreadable ends in a moment.

Files that cannot be read are passed to `on_error(path, message)` and the
others are still processed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import os
import pathlib
import re

import numpy as np

from keras_xception.errors import ConfigError

DEFAULT_EXPLAIN_BATCH_SIZE = 8


@dataclasses.dataclass(frozen=True)
class Prediction:
    """One class of one image.

    Attributes:
        class_index: The class's index in the model's outputs.
        name: Its name (ImageNet's, the model's saved name, or the index).
        synset: The ImageNet synset, or `None` for another model's classes.
        score: Its probability (`keras_xception.source`'s score rule).
    """

    class_index: int
    name: str
    synset: str | None
    score: float


def find_files(paths, on_error) -> list[pathlib.Path]:
    """The image files under `paths`, in the order given; see `images.find_given`."""
    from keras_xception.images import find_given

    return [file for path in paths for file in find_given(path, on_error=on_error)]


def top_predictions(src, probabilities, top) -> list[list[Prediction]]:
    """The `top` most probable classes of each row of `probabilities`."""
    order = np.argsort(-probabilities, axis=-1, kind="stable")[:, :top]
    return [
        [Prediction(int(i), src.class_name(int(i)),
                    src.synsets[int(i)] if src.synsets else None,
                    float(row[int(i)]))
         for i in ranked]
        for row, ranked in zip(probabilities, order)
    ]


def classify(files, src, *, top=None, batch_size=8, max_pixels=None, on_error=None,
             precision="auto", runtime="auto", on_model=None, calibration=None):
    """Classifies `files`; yields `(path, [Prediction, ...])` as they are done.

    Args:
        files: Image files (`find_files` expands folders).
        src: A `keras_xception.source.Source` with a classifier.
        top: Classes per image; `None` for 5 or the model's fewer classes.
        batch_size: Images per forward pass.
        max_pixels: The pixel limit for decoding, or `None` for the default.
        on_error: `on_error(path, message)` for each unreadable file, or
            `None` to raise `ImageError`.
        precision, runtime, calibration: Passed to `optimize_for_inference`
            (`calibration`: for `precision="int8"`).
        on_model: Called with the `Loaded` model once it is built (after
            the first batch is decoded), or `None`.

    Yields:
        `(path, predictions)`, best class first.
    """
    from keras_xception.images import iter_batches

    top = src.check_top(top)
    batches = iter_batches(files, target_size=src.input_size, batch_size=batch_size,
                           on_error=on_error, max_pixels=max_pixels)
    with contextlib.closing(batches):
        first = next(batches, None)
        if first is None:
            return
        from keras_xception.inference import optimize_for_inference

        loaded = src.load()
        if on_model is not None:
            on_model(loaded)
        int8 = {} if calibration is None else {"calibration": calibration}
        model = optimize_for_inference(loaded.model, precision, runtime=runtime, **int8)
        for paths, images in itertools.chain([first], batches):
            first = None  # Drop the reference so the batch can be freed.
            outputs = model.predict(loaded.prepare(images), batch_size=len(paths),
                                    verbose=0)
            del images
            yield from zip(paths, top_predictions(src, loaded.scores(outputs), top))


# --- explain --------------------------------------------------------------------


class Job(os.PathLike):
    """An image to explain: its path (for `iter_batches`) and its PNG name."""

    def __init__(self, path: pathlib.Path, name: pathlib.PurePath):
        self.path = path
        self.name = name  # The PNG's path relative to the output, without ".png".

    def __fspath__(self):
        return os.fspath(self.path)


def find_jobs(paths, on_error) -> list[Job]:
    """The images under `paths`, each with a PNG name of its own.

    The PNG of `PHOTO.jpg` is `PHOTO`; inside a folder given in `paths` it
    keeps its path below that folder. A name already taken (compared
    ignoring case) gets `-2`, `-3`, ...

    Args:
        paths: Files and folders.
        on_error: Called as `on_error(path, message)` for each problem.
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


def resolve_class(text, src, count=None, *, option="--class") -> int:
    """The class index that `text` (an index, a name or a synset) names.

    A number is an index, unless another class is named so: then it is
    refused as ambiguous, and `#N` (`%23N` in a URL) says which, as the
    index N (itself refused if another class is named `#N`).

    Args:
        text: What the user gave.
        src: The `Source`, for its class names and count.
        count: The class count, when the source could not tell it
            (`Loaded.classes`).
        option: How the user gave it, for messages: an option (`"--class"`)
            or a query parameter (`"class"`: "Received: class='99'").

    Raises:
        ConfigError: If it names no class of `src`, or more than one.
    """
    count = src.classes if count is None else count
    text = str(text).strip()
    given = f"{option} {text!r}" if option.startswith("-") else f"{option}={text!r}"
    # `#N` is the index N, as a number alone is, each unless another class
    # bears it as its name; in a URL `#` is written %23.
    hash_sign = "#" if option.startswith("-") else "%23"
    names = src.class_names or ()
    forced = re.fullmatch(r"#\s*(-?[0-9]+)", text)
    number = forced.group(1) if forced else text
    if forced or re.fullmatch(r"-?[0-9]+", text):
        index = int(number)
        named = [i for i, name in enumerate(names) if name == text]
        if not 0 <= index < count:
            if not named or forced:
                raise ConfigError(
                    f"{option} must be a class index from 0 to {count - 1}"
                    + ("" if forced else ", or a class name") + f". Received: {given}")
        elif named and named != [index]:
            how = str if forced else (lambda i: f"'{hash_sign}{i}'")
            raise ConfigError(
                f"{given} is both the index of class {names[index]!r} and the name "
                f"of class {named[0]}; give {how(index)} for the first or "
                f"{how(named[0])} for the second"
            )
        else:
            return index
    for table in (src.synsets, src.class_names):
        if table:
            matches = [i for i, name in enumerate(table) if name == text]
            if not matches:
                matches = [i for i, name in enumerate(table)
                           if name.casefold() == text.casefold()]
            if len(matches) == 1:
                return matches[0]
            if len(matches) > 1:
                raise ConfigError(
                    f"{given} names {len(matches)} classes "
                    f"({', '.join(map(str, matches))}); give the index instead"
                    + (", or the synset" if src.synsets else "")
                )
    if not src.class_names:
        raise ConfigError(
            f"The model has no class names saved; give {option} as an index "
            f"from 0 to {count - 1}. Received: {given}"
        )
    raise ConfigError(
        f"{given} is not a class of this model; give an index from 0 "
        f"to {count - 1} or one of its class names (e.g. {src.class_names[0]!r})"
    )


def explain(jobs, loaded, *, class_index=None, top=1, layer=None, alpha=0.4,
            batch_size=DEFAULT_EXPLAIN_BATCH_SIZE, max_pixels=None, on_error=None):
    """Grad-CAM overlays of `jobs`; yields `(job, rank, class_index, score, overlay)`.

    Args:
        jobs: `Job`s (or paths) to explain.
        loaded: The model (`Source.load()`), whose input rule is used.
        class_index: The class to explain in every image, or `None` for
            each image's `top` most probable classes.
        top: Classes per image when `class_index` is `None`.
        layer: The base's layer to explain, or `None` for the last block.
        alpha: The heatmap's weight over the photo.
        batch_size: Images per forward and backward pass.
        max_pixels: The pixel limit for decoding.
        on_error: `on_error(path, message)` for each unreadable file.

    Yields:
        `overlay` is the uint8 picture at the photo's size, `score` the
        class's probability (the source's score rule). The array is reused
        for the next class or photo: save or copy it before the next one.
    """
    from keras_xception.errors import ImageError
    from keras_xception.explain import explain_batch, logits_to_outputs, overlay
    from keras_xception.images import decode, iter_batches

    from keras_xception.checks import positive_int

    top = positive_int(top, "top", maximum=loaded.classes)
    model = loaded.model
    if model.outputs[0].shape[-1] == 1:
        raise ConfigError(
            f"{loaded.source.given} has a single output (a binary classifier): "
            "Grad-CAM here explains one output per class. Save the model with "
            "two softmax outputs to explain it."
        )
    batches = iter_batches(jobs, target_size=loaded.source.input_size,
                           batch_size=batch_size, on_error=on_error,
                           max_pixels=max_pixels)
    with contextlib.closing(batches):
        for batch_jobs, images in batches:
            images = loaded.prepare(images)
            first = explain_batch(model, images, class_index, layer)
            scores = loaded.scores(logits_to_outputs(model, first.logits))
            if class_index is None:
                ranked = np.argsort(-scores, axis=-1, kind="stable")[:, :top]
            else:
                ranked = first.class_indices[:, None]
            heatmaps = [first.heatmaps]
            for rank in range(1, ranked.shape[1]):
                heatmaps.append(explain_batch(model, images, ranked[:, rank], layer).heatmaps)
            del images
            for i, job in enumerate(batch_jobs):
                try:
                    # uint8 at full size: a 13000x13000 photo is 507 MB.
                    photo = decode(job, target_size=None, max_pixels=max_pixels,
                                   dtype="uint8")
                except ImageError as err:
                    if on_error is None:
                        raise
                    on_error(job, str(err))
                    continue
                last = len(ranked[i]) - 1
                picture = None
                for rank, index in enumerate(ranked[i]):
                    # The last overlay is painted over the photo itself, the
                    # others into one buffer reused from rank to rank.
                    if rank == last:
                        target = photo
                    else:
                        target = picture = picture if picture is not None \
                            else np.empty_like(photo)
                    overlay(photo, heatmaps[rank][i], alpha, out=target)
                    yield job, rank + 1, int(index), float(scores[i, index]), target
                # Free the photo before the next one is decoded.
                del photo, picture, target


def write_png(path, picture) -> None:
    """Writes `picture` (uint8 RGB) as a PNG, atomically, making its folder."""
    from PIL import Image

    from keras_xception.fileio import atomic_write

    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path, "wb") as f:
        Image.fromarray(picture, "RGB").save(f, format="PNG")
