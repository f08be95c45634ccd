"""Image-classification datasets read from a folder of class folders.

`DATA_DIR` follows the `keras.utils.image_dataset_from_directory`
convention: one subfolder per class, named after the class, holding that
class's images (subfolders inside a class folder are searched too):

    DATA_DIR/
        cup/    0001.jpg 0002.png ...
        plate/  0003.jpg ...

Class names are the folder names in sorted order; label `i` is
`class_names[i]`.

Before training, `scan` lists the folder with `keras_xception.images.
find_images` and checks every file cheaply, mostly without decoding its pixels:
its name must have an image extension and Pillow must recognise its header
(for PNG, GIF and the other formats whose `verify` reads the whole file, the
checksums too; a JPEG, or a multi-picture MPO such as a phone's, that does
not end with its end-of-image marker, as one cut short does, is decoded at
1/8 scale to see). A file that fails stops the run with a `DataError` that
lists the bad files and why, since a dataset that quietly loses files trains
a different model than the one its owner thinks. Hidden files (`.DS_Store`,
macOS `._photo.jpg`), `Thumbs.db` and `desktop.ini` are ignored, and so are
files at the top of `DATA_DIR` outside any class folder. An empty class
folder, no class folder at all, or a single class is a `DataError` too.

During training the images are decoded by `keras_xception.images.decode`,
the decoder `keras-xception classify` uses, so a model is trained on exactly
the pixels it will see at inference time. An image that fails to decode
then (deleted, replaced or truncated after the scan, or a JPEG whose damage
the header check cannot see) is skipped: `make_dataset` gives it a sample
weight of 0, so it changes neither the weights nor the metrics, and prints
one warning naming it on stderr. The batches keep their shape, so the
workers of a distributed run stay in step.

File names are carried as bytes (`os.fsencode`), so names that are not
valid UTF-8 train like any other.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import os
import random
import sys
import threading

from keras_xception.errors import ConfigError, DataError
from keras_xception.images import IMAGE_EXTENSIONS, JPEG_FORMATS, find_images

# How many bad files an error message lists before it says "and N more".
MAX_LISTED = 5

# Decoded datasets up to this many bytes are cached in memory after the first
# epoch, so later epochs skip decoding.
CACHE_LIMIT_BYTES = 1 << 30


@dataclasses.dataclass(frozen=True)
class ImageFolder:
    """The checked contents of a `DATA_DIR`.

    Attributes:
        root: The folder, as given.
        class_names: Class folder names, sorted; label `i` is `class_names[i]`.
        paths: Every image path, class by class, sorted within a class.
        labels: The integer label of each path.
    """

    root: str
    class_names: tuple[str, ...]
    paths: tuple[str, ...]
    labels: tuple[int, ...]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def counts(self) -> dict[str, int]:
        """Images per class name."""
        out = {name: 0 for name in self.class_names}
        for label in self.labels:
            out[self.class_names[label]] += 1
        return out


def check_image(path) -> str | None:
    """Checks `path`, mostly without decoding its pixels; returns why it is unusable.

    Args:
        path: An image file.

    Returns:
        `None` if the name has an image extension and Pillow recognises the
        header (and, where `Image.verify` checks them, the checksums; a
        JPEG without its end marker must decode), else a short reason.
    """
    from PIL import Image, UnidentifiedImageError

    if not os.fsdecode(path).lower().endswith(IMAGE_EXTENSIONS):
        return "not an image file (expected one of " + ", ".join(IMAGE_EXTENSIONS) + ")"
    try:
        with open(path, "rb") as f:  # Opened once for every look below.
            with Image.open(f) as image:
                width, height = image.size
                kind = image.format
                image.verify()
            if kind in JPEG_FORMATS and not _ends_a_jpeg(f):
                # Cut short (or followed by other bytes): only decoding
                # tells, at the smallest scale the JPEG decoder offers (1/8).
                f.seek(0)
                with Image.open(f) as image:
                    image.draft("RGB", (1, 1))
                    image.load()
    except UnidentifiedImageError:
        return "not an image Pillow can decode"
    except Image.DecompressionBombError as err:
        return f"refused: {err}"
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        return f"corrupt image ({err})"
    if width < 1 or height < 1:
        return "an image with no pixels"
    return None


def _ends_a_jpeg(f) -> bool:
    """Whether open binary file `f` ends with JPEG's end-of-image marker,
    which a file cut short (a copy or download stopped early) lacks."""
    if f.seek(0, os.SEEK_END) < 2:
        return False
    f.seek(-2, os.SEEK_END)
    return f.read(2) == b"\xff\xd9"


def _format_bad(bad, root) -> str:
    listed = [
        f"{os.fsdecode(os.path.relpath(p, root))} ({why})" for p, why in bad[:MAX_LISTED]
    ]
    if len(bad) > MAX_LISTED:
        listed.append(f"and {len(bad) - MAX_LISTED} more")
    return "; ".join(listed)


def scan(data_dir, *, check_images: bool = True, workers: int | None = None) -> ImageFolder:
    """Lists and checks a folder of class folders.

    Args:
        data_dir: The dataset folder (one subfolder per class).
        check_images: Whether to check each file's header (see the module
            docstring); without it only the file names are checked.
        workers: Threads that check files in parallel; `None` for one per
            CPU core.

    Returns:
        An `ImageFolder`.

    Raises:
        keras_xception.errors.DataError: If the folder is missing, has no
            class folders or a single one, has an empty class folder, or
            holds files that are not images or cannot be read (the message
            is one line naming them, with the reason).
    """
    root = os.fspath(data_dir)
    if not os.path.isdir(root):
        what = "does not exist" if not os.path.exists(root) else "is not a folder"
        raise DataError(f"Dataset folder {root!r} {what}.")
    class_names = tuple(
        sorted(
            entry.name
            for entry in os.scandir(root)
            if entry.is_dir() and not entry.name.startswith(".")
        )
    )
    if not class_names:
        raise DataError(
            f"Dataset folder {root!r} has no class folders: put each class's "
            "images in a subfolder named after the class."
        )
    if len(class_names) == 1:
        raise DataError(
            f"Dataset folder {root!r} has a single class folder "
            f"({class_names[0]!r}); a classifier needs at least 2 classes."
        )
    bad = []

    def report(path, message):
        bad.append((os.fspath(path), message))

    files = {
        name: [
            os.fspath(p)
            for p in find_images([os.path.join(root, name)], on_error=report, extensions=None)
        ]
        for name in class_names
    }
    empty = [name for name in class_names if not files[name]]
    if empty and not bad:
        raise DataError(
            f"Dataset folder {root!r} has {len(empty)} empty class "
            f"folder{'s' if len(empty) > 1 else ''}: "
            + ", ".join(repr(name) for name in empty)
        )

    paths, labels = [], []
    for label, name in enumerate(class_names):
        paths += files[name]
        labels += [label] * len(files[name])

    if check_images:
        with concurrent.futures.ThreadPoolExecutor(workers or os.cpu_count()) as pool:
            reasons = list(pool.map(check_image, paths))
    else:
        reasons = [
            None if os.fsdecode(p).lower().endswith(IMAGE_EXTENSIONS) else "not an image file"
            for p in paths
        ]
    bad += [(p, why) for p, why in zip(paths, reasons, strict=True) if why is not None]
    if bad:
        total = len(paths) + sum(1 for p, _ in bad if p not in paths)
        raise DataError(
            f"{len(bad)} of the {total} files in {root!r} "
            f"{'is not a usable image' if len(bad) == 1 else 'are not usable images'}: "
            f"{_format_bad(bad, root)}. Fix or remove them and run again."
        )
    return ImageFolder(root, class_names, tuple(paths), tuple(labels))


def split(folder: ImageFolder, val_split: float, *, seed: int = 1337):
    """Splits `folder` into training and validation (paths, labels) lists.

    The split is stratified: each class gives `round(val_split * n)` of its
    `n` images to validation, but always keeps at least one for training.
    It depends only on `seed`, so every worker of a distributed run gets the
    same split.

    Returns:
        `((train_paths, train_labels), (val_paths, val_labels))`; the
        validation lists are empty when `val_split` is 0.

    Raises:
        keras_xception.errors.ConfigError: If `val_split` is not in [0, 1).
        keras_xception.errors.DataError: If `val_split > 0` but no class has
            enough images to give any to validation.
    """
    if (
        isinstance(val_split, bool)
        or not isinstance(val_split, (int, float))
        or not (0 <= val_split < 1)
    ):
        raise ConfigError(
            "`val_split` must be a fraction in [0, 1). "
            f"Received: val_split={val_split!r}"
        )
    rng = random.Random(seed)
    train, val = [], []
    for label in range(folder.num_classes):
        items = [
            (p, l) for p, l in zip(folder.paths, folder.labels, strict=True) if l == label
        ]
        rng.shuffle(items)
        k = min(int(round(val_split * len(items))), len(items) - 1)
        val += items[:k]
        train += items[k:]
    if val_split > 0 and not val:
        raise DataError(
            f"--val-split {val_split} leaves no validation images: the "
            f"{len(folder.paths)} images are too few. Add images, raise the "
            "fraction, or use a validation split of 0."
        )
    rng.shuffle(train)
    unzip = lambda pairs: ([p for p, _ in pairs], [l for _, l in pairs])  # noqa: E731
    return unzip(train), unzip(val)


def shard(paths, labels, index: int, count: int):
    """Worker `index`'s share of `paths`, padded so every worker has as many.

    Image `i` goes to worker `i % count`, so every image belongs to exactly
    one worker. Each share is padded to `ceil(len(paths) / count)` entries
    with empty paths of weight 0, which `make_dataset` turns into blank
    images that count for nothing; every worker then runs the same number
    of steps of the same batch sizes, as synchronous training needs.

    Args:
        paths: All image paths.
        labels: Their labels.
        index: This worker's index, in `[0, count)`.
        count: The number of workers.

    Returns:
        `(paths, labels, weights)`: lists of equal length, weights 1.0 for
        real images and 0.0 for padding.
    """
    if not 0 <= index < count:
        raise ConfigError(f"Worker index {index} is not in [0, {count}).")
    mine_paths = list(paths)[index::count]
    mine_labels = list(labels)[index::count]
    weights = [1.0] * len(mine_paths)
    padding = -(-len(paths) // count) - len(mine_paths)
    return (
        mine_paths + [""] * padding,
        mine_labels + [0] * padding,
        weights + [0.0] * padding,
    )


class _Skipped:
    """Warns once per file that could not be decoded during training."""

    def __init__(self, stream=None):
        self._seen = set()
        self._lock = threading.Lock()
        self._stream = stream

    def __call__(self, path, message):
        with self._lock:
            if path in self._seen:
                return
            self._seen.add(path)
        print(
            f"warning: skipped an image that could not be read: {message}",
            file=self._stream or sys.stderr,
            flush=True,
        )


def make_dataset(
    paths,
    labels,
    *,
    image_size: int,
    batch_size: int,
    weights=None,
    shuffle: bool = False,
    seed: int = 1337,
    cache: bool | None = None,
    warn=None,
):
    """A batched `tf.data.Dataset` of `(uint8 images, int32 labels, float32 weights)`.

    Images are decoded with `keras_xception.images.decode`, resized to
    `image_size` x `image_size` and kept in [0, 255] as `uint8`. An image
    that cannot be decoded, and an empty path (padding from `shard`), gives
    a blank image of weight 0; the first is reported through `warn`.

    Args:
        paths: Image paths (`str`, `bytes` or path-like).
        labels: Integer labels, one per path.
        image_size: Height and width of the decoded images.
        batch_size: Batch size of this dataset (per worker under
            `shard`).
        weights: Sample weights, one per path; `None` for all 1.
        shuffle: Whether to reshuffle every epoch (seeded).
        seed: The shuffle seed.
        cache: Whether to keep decoded images in memory after the first
            epoch; `None` caches when they fit in `CACHE_LIMIT_BYTES`.
        warn: Called as `warn(path, message)` for each image that fails to
            decode; `None` prints one line per file on stderr.

    Returns:
        The `tf.data.Dataset`, not sharded further by `tf.distribute`.
    """
    import numpy as np
    import tensorflow as tf

    from keras_xception.images import decode

    size = int(image_size)
    report = warn or _Skipped()
    blank = np.zeros((size, size, 3), np.uint8)

    def load_one(raw):
        if not raw:
            return blank, np.float32(0)
        try:
            image = decode(os.fsdecode(raw), target_size=(size, size))
        except Exception as err:  # noqa: BLE001 - any failure skips the image
            report(os.fsdecode(raw), str(err).splitlines()[0] if str(err) else repr(err))
            return blank, np.float32(0)
        return np.clip(np.rint(image), 0, 255).astype(np.uint8), np.float32(1)

    def load(path, label, weight):
        image, ok = tf.numpy_function(
            load_one, [path], (tf.uint8, tf.float32), stateful=False
        )
        image.set_shape((size, size, 3))
        ok.set_shape(())
        return image, label, weight * ok

    if weights is None:
        weights = [1.0] * len(paths)
    encoded = [os.fsencode(p) if p != "" else b"" for p in paths]
    ds = tf.data.Dataset.from_tensor_slices(
        (
            tf.constant(encoded, tf.string),
            tf.constant(list(labels), tf.int32),
            tf.constant(list(weights), tf.float32),
        )
    )
    ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    if cache is None:
        cache = len(paths) * size * size * 3 <= CACHE_LIMIT_BYTES
    if cache:
        ds = ds.cache()
    if shuffle:
        ds = ds.shuffle(max(len(paths), 1), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)
    # Each worker reads only its own shard (see `shard`): tf.distribute must
    # not split it again.
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = (
        tf.data.experimental.AutoShardPolicy.OFF
    )
    return ds.with_options(options)
