"""The accuracy guard of `precision="auto"`.

Before `optimize_for_inference(model, precision="auto")` keeps a bfloat16
runtime, it runs a fixed probe batch through the bf16 runtime and through the
float32 model and compares the two: every image's outputs (flattened) must
have a cosine similarity of at least `THRESHOLD` with float32's. If not, it
warns (`AccuracyWarning`) and uses float32. The check runs once per process
for each model (by the hash of its configuration and weights) and runtime.

The probe is deterministic: smooth colour gradients and waves with a little
seeded noise, in the [-1, 1] range of `preprocess_input`, so it exercises
every channel and spatial frequency without shipping an image.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np

from keras_xception import architecture

# Minimum cosine of bf16 outputs to float32's, per probe image. On the
# genuine ImageNet features of 18 photos bf16 stays above 0.999.
THRESHOLD = 0.998
PROBE_IMAGES = 2

_results = {}


class AccuracyWarning(UserWarning):
    """bfloat16 outputs were too far from float32's; float32 is used."""


def probe_batch(input_shape, count=PROBE_IMAGES):
    """The fixed probe batch for a model input of shape `(H, W, C)`.

    Args:
        input_shape: The model's input shape without the batch axis; a `None`
            height or width becomes `architecture.DEFAULT_SIZE`.
        count: Number of images.

    Returns:
        A float32 array of shape `(count, H, W, C)` with values in [-1, 1].
    """
    height, width, channels = (
        architecture.DEFAULT_SIZE if d is None else int(d) for d in input_shape
    )
    rng = np.random.default_rng(20171006)
    y = np.linspace(0.0, 1.0, height)[:, None, None]
    x = np.linspace(0.0, 1.0, width)[None, :, None]
    c = np.arange(channels)[None, None, :]
    images = []
    for i in range(count):
        wave = np.sin(2 * np.pi * ((i + 1) * x + (c + 1) * y + 0.3 * c))
        ramp = (x * (1 - y) + (i % 2) * y) * 2 - 1
        noise = rng.normal(0.0, 0.1, (height, width, channels))
        images.append(np.clip(0.5 * wave + 0.4 * ramp + noise, -1, 1))
    return np.stack(images).astype("float32")


def _flat(outputs, count):
    import keras

    parts = [np.asarray(o, np.float64).reshape(count, -1)
             for o in keras.tree.flatten(outputs)]
    return np.concatenate(parts, axis=1)


def min_cosine(reference, candidate):
    """The smallest per-image cosine between two outputs (any nesting).

    Args:
        reference: Outputs for a batch (arrays, or a structure of arrays).
        candidate: Outputs for the same batch, same structure.

    Returns:
        A float in [-1, 1]; 1.0 for images whose outputs are both zero.
    """
    import keras

    count = int(np.shape(keras.tree.flatten(reference)[0])[0])
    a, b = _flat(reference, count), _flat(candidate, count)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    dots = (a * b).sum(axis=1)
    both_zero = (np.abs(a).sum(1) == 0) & (np.abs(b).sum(1) == 0)
    cos = np.where(both_zero, 1.0, dots / np.where(norms > 0, norms, 1.0))
    return float(cos.min())


def fingerprint(model):
    """A hash of `model`'s configuration and weights (hex string)."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(json.dumps(model.get_config(), sort_keys=True, default=str).encode())
    for value in model.get_weights():
        digest.update(np.ascontiguousarray(value).tobytes())
    return digest.hexdigest()


def check(model, runtime, forward, batch=None):
    """Whether `forward` (bf16) keeps `model`'s float32 outputs on the probe.

    Args:
        model: The float32 `keras.Model` (the reference, called eagerly).
        runtime: The runtime's name, part of the cache key.
        forward: The bf16 runtime's function: batch -> float32 outputs.
        batch: The probe batch; `probe_batch(model's input shape)` if `None`.

    Returns:
        `(passed, cosine)`: whether the minimum cosine reaches `THRESHOLD`,
        and that cosine. Computed once per process for each model and
        runtime; later calls return the first answer.
    """
    import keras

    key = (runtime, fingerprint(model))
    if key not in _results:
        if batch is None:
            batch = probe_batch(tuple(model.inputs[0].shape[1:]))
        # In the structure the model was built with (a model saved with
        # `inputs=[x]` wants a list, and warns otherwise).
        inputs = keras.tree.pack_sequence_as(model.input, [batch])
        reference = keras.tree.map_structure(
            keras.ops.convert_to_numpy, model(inputs, training=False)
        )
        cosine = min_cosine(reference, forward(batch))
        _results[key] = (cosine >= THRESHOLD, cosine)
    return _results[key]
