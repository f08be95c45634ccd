"""`keras-xception classify`: ImageNet predictions for image files.

Images are decoded and resized by a pool of threads (Pillow releases the GIL
while it decodes and resizes) that runs ahead of the model by a few batches,
so loading overlaps inference. Resizing is antialiased bilinear
(`keras_xception.preprocessing.RESIZE_METHOD`): Keras's `load_img` defaults
to nearest neighbour, which aliases fine texture when a photo is shrunk to
299x299 and costs accuracy; bilinear is what Keras's and keras-hub's
examples use for Xception.

A file that is missing or cannot be decoded is named on stderr and skipped;
the others are classified and the exit status is 1 at the end.
"""

from __future__ import annotations

import collections
import concurrent.futures
import json
import os
import pathlib
import sys

# What a folder is searched for (case-insensitive). Files named on the command
# line are read whatever their extension.
from keras_xception.preprocessing import IMAGE_EXTENSIONS


def add_parser(subparsers):
    parser = subparsers.add_parser(
        "classify",
        help="print ImageNet predictions for image files or folders",
        description="Classify images with Xception. A folder is searched "
        "recursively for files with the extensions "
        + ", ".join(IMAGE_EXTENSIONS) + ". Unreadable or missing files are "
        "named on stderr and skipped; the exit status is then 1.",
    )
    parser.add_argument("paths", nargs="+", metavar="PATH",
                        help="image file or folder")
    parser.add_argument("--weights", default="imagenet",
                        help="'imagenet' (default; downloaded and verified once), "
                        "the path of a weights file with the classifier top, or "
                        "an http(s) URL of one")
    parser.add_argument("--top", type=int, default=5, metavar="K",
                        help="predictions per image (default: 5)")
    parser.add_argument("--json", action="store_true",
                        help="print a JSON list of {path, predictions} instead "
                        "of a table")
    parser.add_argument("--batch-size", type=int, default=8, metavar="N",
                        help="images per forward pass (default: 8)")
    parser.set_defaults(run=run)


def find_images(paths):
    """Expands folders into their image files.

    Args:
        paths: Files and folders, as given on the command line.

    Returns:
        `(files, missing)`: the files to read, in command-line order (each
        folder's files sorted), and the paths that do not exist.
    """
    files, missing = [], []
    for path in paths:
        path = pathlib.Path(path)
        if path.is_dir():
            found = [
                p for p in path.rglob("*")
                if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
            ]
            files.extend(sorted(found))
        elif path.exists():
            files.append(path)
        else:
            missing.append(path)
    return files, missing


def _load(path):
    from keras_xception.errors import ImageError
    from keras_xception.preprocessing import load_image, preprocess_input

    try:
        return preprocess_input(load_image(path)), None
    except ImageError as err:
        return None, str(err)


class _Prefetcher:
    """Decodes `files` on a thread pool, up to `ahead` files ahead of use.

    Decoding starts as soon as the object is made, so it overlaps whatever
    the caller does next (building the model, then each forward pass).
    Iterating yields `(path, array or None, error or None)` in file order.
    """

    def __init__(self, files, workers, ahead):
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=workers)
        self._files = iter(files)
        self._pending = collections.deque()
        for _ in range(ahead):
            if not self._submit_next():
                break

    def _submit_next(self):
        path = next(self._files, None)
        if path is None:
            return False
        self._pending.append((path, self._pool.submit(_load, path)))
        return True

    def __iter__(self):
        try:
            while self._pending:
                path, future = self._pending.popleft()
                self._submit_next()
                array, error = future.result()
                yield path, array, error
        finally:
            self.close()

    def close(self):
        self._pool.shutdown(wait=True, cancel_futures=True)


def classify(files, weights, top, batch_size, on_error):
    """Classifies `files`; yields `(path, [(synset, label, score), ...])`.

    Files that cannot be read are passed to `on_error(path, message)`.
    """
    import numpy as np

    from keras_xception.inference import optimize_for_inference
    from keras_xception.model import Xception
    from keras_xception.preprocessing import decode_predictions

    # Start decoding before building the model: the two overlap.
    workers = min(8, max(2, os.cpu_count() or 2))
    stream = _Prefetcher(files, workers=workers, ahead=3 * batch_size)
    try:
        model = optimize_for_inference(Xception(weights=weights))
    except BaseException:
        stream.close()
        raise

    def flush(paths, arrays):
        probs = model.predict(np.stack(arrays), batch_size=batch_size)
        yield from zip(paths, decode_predictions(probs, top=top))

    paths, arrays = [], []
    for path, array, error in stream:
        if error is not None:
            on_error(path, error)
            continue
        paths.append(path)
        arrays.append(array)
        if len(arrays) == batch_size:
            yield from flush(paths, arrays)
            paths, arrays = [], []
    if arrays:
        yield from flush(paths, arrays)


def _print_table(path, predictions):
    print(path)
    for rank, (synset, label, score) in enumerate(predictions, start=1):
        print(f"  {rank:>2}. {score:7.2%}  {label:<30} {synset}")


def run(args) -> int:
    from keras_xception.errors import ConfigError

    if not 1 <= args.top <= 1000:
        raise ConfigError(f"--top must be from 1 to 1000. Received: --top {args.top}")
    if args.batch_size < 1:
        raise ConfigError(
            f"--batch-size must be positive. Received: --batch-size {args.batch_size}"
        )
    files, missing = find_images(args.paths)
    failures = 0
    for path in missing:
        print(f"error: No such file or folder: {str(path)!r}", file=sys.stderr)
        failures += 1
    if not files:
        print("error: no image files to classify", file=sys.stderr)
        return 1

    # Fetch (or find) the weights before TensorFlow is imported: a missing
    # file or an empty cache offline fails in a moment, with only its message.
    from keras_xception.weights import resolve

    weights = str(resolve(args.weights, include_top=True))

    def on_error(path, message):
        nonlocal failures
        failures += 1
        print(f"error: {message}", file=sys.stderr, flush=True)

    results = []
    for path, predictions in classify(
        files, weights, args.top, args.batch_size, on_error
    ):
        if args.json:
            results.append({
                "path": str(path),
                "predictions": [
                    {"synset": synset, "label": label, "score": score}
                    for synset, label, score in predictions
                ],
            })
        else:
            _print_table(path, predictions)
            sys.stdout.flush()
    if args.json:
        json.dump(results, sys.stdout, indent=2)
        print()
    if failures:
        print(f"{failures} path(s) could not be classified", file=sys.stderr)
        return 1
    return 0
