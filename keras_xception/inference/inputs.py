"""What the fast `predict` checks and guarantees about its input batch.

The runtimes compute a batch as one block and do not check what they are
given, so the fast `predict` (see `predictor.attach_fast_predict`) keeps the
contract of Keras's own `Model.predict` itself, with these helpers:

- `check_shape`: a batch of the wrong image size, or an empty one, is one
  short `ConfigError` naming the expected and received shapes (TensorFlow's
  own error for a wrong size is a 2,000-character `TypeError`; Keras's
  `predict` fails on an empty batch with an `UnboundLocalError`);
- `finite_rows` and `mark_non_finite`: an image holding a NaN or an
  infinity gets NaN in every one of its outputs, on every runtime, and
  the other images of the batch keep their own answers, as with Keras's
  `predict` of the float32 model. The runtimes' kernels do not keep NaN by
  themselves: TensorFlow's oneDNN convolution with a fused ReLU (the
  grappler fusion of the folded convolution, its bias and its ReLU) and
  its max pooling, OpenVINO's ReLU and max pooling, and ONNX Runtime's max
  pooling return a number where an input was NaN, so a NaN pixel can
  vanish in the first block. Checking the input is one pass over it (see
  `finite_rows`): about 0.01% of the model's time.
"""

from __future__ import annotations

import numpy as np

from keras_xception.errors import ConfigError


def _shape(x):
    return tuple(None if d is None else int(d) for d in x.shape)


def check_shape(model, x):
    """Raises a one-line `ConfigError` if batch `x` does not fit `model`'s input.

    Args:
        model: A single-input `keras.Model`.
        x: A batch (NumPy array or backend tensor).

    Raises:
        keras_xception.errors.ConfigError: If `x` holds no image, or its
            images do not have the model's input shape; the message names
            the expected shape (`None` where any size fits) and the received
            one.
    """
    expected = tuple(model.inputs[0].shape)
    received = _shape(x)
    if len(received) != len(expected) or any(
        e is not None and r != e for e, r in zip(expected[1:], received[1:])
    ):
        raise ConfigError(
            f"The model expects input batches of shape {expected} "
            f"(batch, height, width, channels). Received: shape={received}"
        )
    if received[0] == 0:
        raise ConfigError(
            f"The input batch holds no image; the model expects shape "
            f"{expected} with at least one image. Received: shape={received}"
        )


def finite_rows(x):
    """Whether each image of batch `x` holds only finite values.

    For a NumPy array it is one vectorised pass: 0.2-0.3 ms for a float32
    batch of 8x299x299x3 on a Zen 4 CPU, where the model took 2.4-2.5 s for
    it on 2 cores (the `keras` and `openvino` runtimes, float32).

    Args:
        x: A float NumPy array or backend tensor, batch first.

    Returns:
        A bool NumPy array of shape `(len(x),)`.
    """
    if isinstance(x, np.ndarray):
        flat = x.reshape(x.shape[0], -1)
        if not np.issubdtype(flat.dtype, np.floating):
            return np.ones(flat.shape[0], dtype=bool)
        return np.isfinite(flat).all(axis=1)
    import keras

    ops = keras.ops
    flat = ops.reshape(x, (ops.shape(x)[0], -1))
    return np.asarray(ops.convert_to_numpy(ops.all(ops.isfinite(flat), axis=1)))


def mark_non_finite(outputs, finite):
    """`outputs` with every output of the images where `finite` is False set to NaN.

    Args:
        outputs: One batch's float32 outputs (arrays, or a structure of them).
        finite: A bool array, one entry per image (`finite_rows`).

    Returns:
        `outputs` itself when every image is finite, else new arrays.
    """
    if finite.all():
        return outputs
    import keras

    def mark(values):
        values = np.asarray(values)
        bad = ~finite.reshape((-1,) + (1,) * (values.ndim - 1))
        return np.where(bad, np.array(np.nan, dtype=values.dtype), values)

    return keras.tree.map_structure(mark, outputs)
