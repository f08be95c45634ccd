"""Image-classification datasets read from a folder of class folders.

`DATA_DIR` follows the `keras.utils.image_dataset_from_directory`
convention: one subfolder per class, named after the class, holding that
class's images (subfolders inside a class folder are searched too):

    DATA_DIR/
        cup/    0001.jpg 0002.png ...
        plate/  0003.jpg ...

Class names are the folder names in sorted order; label `i` is
`class_names[i]`.

The folder is checked completely before anything is trained (`scan`):

- every file in a class folder must be an image that decodes. A corrupt
  file, a file that is not an image (say `notes.txt`) or a format Pillow
  cannot decode stops the run with a `DataError` that lists every bad file
  and why; nothing is skipped silently, because a dataset that quietly loses
  files trains a different model than the one its owner thinks. Hidden files
  (names starting with `.`, such as `.DS_Store` or macOS `._photo.jpg`) and
  `Thumbs.db`/`desktop.ini` are ignored, and so are files at the top of
  `DATA_DIR` outside any class folder;
- an empty class folder, no class folder at all, or a single class is a
  `DataError` that says so.

Images are decoded by `keras_xception.preprocessing.load_image`, the loader
that `keras-xception classify` uses, so a model is trained on exactly the
pixels it will see at inference time: EXIF orientation applied, grayscale,
palette and transparent images converted to RGB, and an antialiased
bilinear resize to the square training size. Pixels stay in [0, 255]; the
models built by `keras_xception.transfer` preprocess inside.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import os
import random

from keras_xception.errors import ConfigError, DataError

# File name endings of the images a class folder may hold: Keras's own list
# (`image_dataset_from_directory`) plus the other formats Pillow decodes.
from keras_xception.preprocessing import IMAGE_EXTENSIONS

# Files that operating systems drop into folders; never part of a dataset.
IGNORED_NAMES = frozenset({"thumbs.db", "desktop.ini"})

# How many bad files an error message lists before it says "and N more".
MAX_LISTED = 20

# Decoded datasets up to this many bytes are cached in memory after the first
# epoch, so later epochs skip JPEG decoding.
CACHE_LIMIT_BYTES = 1 << 30


@dataclasses.dataclass(frozen=True)
class ImageFolder:
    """The validated contents of a `DATA_DIR`.

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


def _ignored(name: str) -> bool:
    return name.startswith(".") or name.lower() in IGNORED_NAMES


def _list_files(folder: str) -> list[str]:
    """Every non-hidden file under `folder`, recursively, sorted."""
    out = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        out += [os.path.join(dirpath, f) for f in sorted(filenames) if not _ignored(f)]
    return out


def check_image(path: str) -> str | None:
    """Decodes `path` fully; returns why it is unusable, or `None` if it is fine."""
    from PIL import Image, UnidentifiedImageError

    if not path.lower().endswith(IMAGE_EXTENSIONS):
        return "not an image file (expected one of " + ", ".join(IMAGE_EXTENSIONS) + ")"
    try:
        with Image.open(path) as image:
            image.load()
    except UnidentifiedImageError:
        return "not an image Pillow can decode"
    except (OSError, SyntaxError, ValueError) as err:
        return f"corrupt image ({err})"
    except Image.DecompressionBombError as err:
        return f"refused: {err}"
    return None


def _format_bad(bad: list[tuple[str, str]], root: str) -> str:
    lines = [f"  {os.path.relpath(p, root)}: {why}" for p, why in bad[:MAX_LISTED]]
    if len(bad) > MAX_LISTED:
        lines.append(f"  ... and {len(bad) - MAX_LISTED} more")
    return "\n".join(lines)


def scan(
    data_dir, *, check_images: bool = True, workers: int | None = None
) -> ImageFolder:
    """Lists and validates a folder of class folders.

    Args:
        data_dir: The dataset folder (one subfolder per class).
        check_images: Whether to decode every image to find corrupt files.
            Leave on: a bad file found mid-training costs the whole run.
        workers: Threads that decode images in parallel (Pillow releases
            the GIL while decoding); `None` for one per CPU core.

    Returns:
        An `ImageFolder`.

    Raises:
        keras_xception.errors.DataError: If the folder is missing, has no
            class folders or a single one, has an empty class folder, or
            holds files that are not decodable images (all of them are
            listed, with the reason).
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
    files = {name: _list_files(os.path.join(root, name)) for name in class_names}
    empty = [name for name in class_names if not files[name]]
    if empty:
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
            None if p.lower().endswith(IMAGE_EXTENSIONS) else "not an image file"
            for p in paths
        ]
    bad = [(p, why) for p, why in zip(paths, reasons, strict=True) if why is not None]
    if bad:
        raise DataError(
            f"{len(bad)} of the {len(paths)} files in {root!r} "
            f"{'is not a usable image' if len(bad) == 1 else 'are not usable images'}; "
            "fix or remove them and run again:\n" + _format_bad(bad, root)
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
            (p, l)
            for p, l in zip(folder.paths, folder.labels, strict=True)
            if l == label
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


def make_dataset(
    paths,
    labels,
    *,
    image_size: int,
    batch_size: int,
    shuffle: bool = False,
    seed: int = 1337,
    cache: bool | None = None,
):
    """A batched `tf.data.Dataset` of `(uint8 images, int labels)`.

    Images are decoded with `load_image` (see the module docstring), resized
    to `image_size` x `image_size` and kept in [0, 255] as `uint8`.

    Args:
        paths: Image paths.
        labels: Integer labels, one per path.
        image_size: Height and width of the decoded images.
        batch_size: Global batch size.
        shuffle: Whether to reshuffle every epoch (seeded, so every worker
            of a distributed run sees the same order and its shard of it).
        seed: The shuffle seed.
        cache: Whether to keep decoded images in memory after the first
            epoch; `None` caches when they fit in `CACHE_LIMIT_BYTES`.
    """
    import numpy as np
    import tensorflow as tf

    from keras_xception.preprocessing import load_image

    size = int(image_size)

    def decode(path):
        image = load_image(path.decode("utf-8"), target_size=(size, size))
        return np.clip(np.rint(image), 0, 255).astype(np.uint8)

    def load(path, label):
        image = tf.numpy_function(decode, [path], tf.uint8, stateful=False)
        image.set_shape((size, size, 3))
        return image, label

    ds = tf.data.Dataset.from_tensor_slices(
        (tf.constant(list(paths), tf.string), tf.constant(list(labels), tf.int32))
    )
    ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    if cache is None:
        cache = len(paths) * size * size * 3 <= CACHE_LIMIT_BYTES
    if cache:
        ds = ds.cache()
    if shuffle:
        ds = ds.shuffle(max(len(paths), 1), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)
    # Every worker reads the same files; each keeps its share of each batch.
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = (
        tf.data.experimental.AutoShardPolicy.DATA
    )
    return ds.with_options(options)
