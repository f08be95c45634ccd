"""Input preprocessing, prediction decoding and image loading."""

from __future__ import annotations

import functools
import json
from importlib import resources

import numpy as np

from keras_xception.checks import positive_int
from keras_xception.errors import ConfigError

# Re-exported: the file extensions searched for in folders and how images are
# resized, both defined in `keras_xception.images`.
from keras_xception.images import IMAGE_EXTENSIONS, RESIZE_METHOD  # noqa: F401

NUM_CLASSES = 1000


def _check_data_format(data_format):
    if data_format is None:
        import keras

        return keras.config.image_data_format()
    if data_format not in ("channels_first", "channels_last"):
        raise ConfigError(
            "Expected data_format to be one of `channels_first` or "
            f"`channels_last`. Received: data_format={data_format!r}"
        )
    return data_format


def preprocess_input(x, data_format=None):
    """Scales images from [0, 255] to [-1, 1], as Xception was trained.

    Computes `x / 127.5 - 1`. Unlike `keras.applications.xception`'s
    version, the caller's array is never modified: a new array or tensor is
    always returned.

    Args:
        x: Images with values in [0, 255]: a NumPy array (any integer or
            float dtype; one image or a batch, any layout) or a backend
            tensor. Python lists are converted with `numpy.asarray`.
        data_format: `None`, `"channels_last"` or `"channels_first"`. The
            scaling is the same for every channel, so this is only
            validated, as Keras does.

    Returns:
        A NumPy array (for NumPy or list input) or a backend tensor. Integer
        input becomes `float32` (Keras's `floatx`); float input keeps its
        dtype.

    Raises:
        ValueError: If `data_format` is not one of the values above.
    """
    _check_data_format(data_format)
    if isinstance(x, (list, tuple)):
        x = np.asarray(x)
    if isinstance(x, np.ndarray) or np.isscalar(x):
        x = np.asarray(x)
        if not np.issubdtype(x.dtype, np.floating):
            import keras

            x = x.astype(keras.config.floatx())
        return x / x.dtype.type(127.5) - x.dtype.type(1.0)

    from keras import ops

    if not ops.is_tensor(x):
        x = ops.convert_to_tensor(x)
    if "float" not in str(x.dtype):
        import keras

        x = ops.cast(x, keras.config.floatx())
    return x / 127.5 - 1.0


@functools.lru_cache(maxsize=1)
def imagenet_classes():
    """The 1000 ImageNet classes as a tuple of `(synset, name)` pairs.

    Read from the copy of Keras's `imagenet_class_index.json` that ships in
    this package (generated from keras-hub by `scripts/make_class_index.py`),
    so decoding never needs the network.
    """
    text = (
        resources.files("keras_xception")
        .joinpath("data", "imagenet_class_index.json")
        .read_text(encoding="utf-8")
    )
    index = json.loads(text)
    return tuple(tuple(index[str(i)]) for i in range(NUM_CLASSES))


def decode_predictions(preds, top=5):
    """Decodes ImageNet predictions into `(synset, name, score)` tuples.

    Args:
        preds: A batch of predictions of shape `(samples, 1000)`: a NumPy
            array or a backend tensor (probabilities or logits).
        top: How many of the highest-scoring classes to return per sample,
            from 1 to 1000.

    Returns:
        One list per sample of `(synset, name, score)` tuples, highest
        score first, e.g. `("n02504458", "African_elephant", 0.93)`.
        Scores are Python floats.

    Raises:
        ValueError: If `preds` is not of shape `(samples, 1000)` or `top` is
            not an integer in [1, 1000].
    """
    top = positive_int(top, "top", maximum=NUM_CLASSES)
    if not isinstance(preds, np.ndarray):
        from keras import ops

        preds = ops.convert_to_numpy(preds)
    shape = tuple(preds.shape)
    if len(shape) != 2 or shape[1] != NUM_CLASSES:
        raise ConfigError(
            "`decode_predictions` expects a batch of predictions (i.e. a 2D "
            f"array of shape (samples, {NUM_CLASSES})). Received array with "
            f"shape: {shape}"
        )
    classes = imagenet_classes()
    results = []
    for row in preds.astype(np.float64):
        # A stable sort keeps ties in class order.
        order = np.argsort(-row, kind="stable")[:top]
        results.append([classes[i] + (float(row[i]),) for i in order])
    return results


def load_image(path, target_size=(299, 299)):
    """Loads an image file as a float32 RGB array with values in [0, 255].

    The same decoding as `keras-xception classify` and the training
    datasets (`keras_xception.images.decode`): grayscale, palette, CMYK,
    16-bit and transparent images are converted to RGB (transparent areas
    become white); the EXIF orientation is applied, so the array is the
    photo as a phone or image viewer shows it; large JPEGs are decoded at a
    reduced scale first; images over the pixel limit
    (`keras_xception.images.MAX_PIXELS`, or KERAS_XCEPTION_MAX_PIXELS) are
    refused.

    Args:
        path: Path of the image file.
        target_size: `(height, width)` to resize to with antialiased
            bilinear interpolation (`RESIZE_METHOD`), or `None` to keep the
            image's size.

    Returns:
        A `float32` NumPy array of shape `(height, width, 3)`.

    Raises:
        keras_xception.errors.ImageError: (a `ValueError`) if the file is
            missing, cannot be decoded as an image or is over the pixel
            limit. The message names the path.
        ValueError: If `target_size` is not `None` or two positive integers.
    """
    from keras_xception.images import decode

    return decode(path, target_size)
