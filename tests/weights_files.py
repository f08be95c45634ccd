"""Small HDF5 files for the weights tests, built with h5py.

Files that only need the right structure declare their datasets without
writing data, so an Xception-shaped file costs a few kilobytes.
"""

from __future__ import annotations

import hashlib
import io

import h5py
import numpy as np

from keras_xception import architecture


def h5_bytes(size=300_000, seed=0) -> bytes:
    """A small but real HDF5 file, as bytes."""
    buffer = io.BytesIO()
    data = np.random.default_rng(seed).random(size // 8)
    with h5py.File(buffer, "w") as f:
        f["w"] = data
    return buffer.getvalue()


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def legacy_file(path, layers, *, filler=("input_1",)):
    """A Keras 2 weights file: `layers` is [(name, [(weight, shape), ...])]."""
    with h5py.File(path, "w") as f:
        names = list(filler)
        for name in filler:
            f.create_group(name).attrs["weight_names"] = np.array([], dtype="S")
        for name, weights in layers:
            group = f.create_group(name)
            group.attrs["weight_names"] = [w.encode() for w, _ in weights]
            for weight, shape in weights:
                group.create_dataset(weight, shape=shape, dtype="float32")
            names.append(name)
        f.attrs["layer_names"] = [n.encode() for n in names]
        f.attrs["backend"] = b"tensorflow"
        f.attrs["keras_version"] = b"2.2.4"
    return path


def keras3_file(path, layers):
    """A Keras 3 `.weights.h5`: `layers` is [(key, [shape, ...])]."""
    with h5py.File(path, "w") as f:
        f.create_group("vars")
        for key, shapes in layers:
            variables = f.create_group(f"layers/{key}/vars")
            for i, shape in enumerate(shapes):
                variables.create_dataset(str(i), shape=shape, dtype="float32")
    return path


def xception_legacy(path, include_top=True, *, classes=1000, channels=3):
    """An official-layout Xception file (structure only)."""
    layout = architecture.weight_layout(include_top, classes=classes, channels=channels)
    return legacy_file(
        path,
        [
            (e.name, [(f"{e.name}/w{i}:0", shape) for i, shape in enumerate(e.shapes)])
            for e in layout
        ],
    )
