"""Input preprocessing, prediction decoding and image loading."""

from __future__ import annotations

import functools
import json
import os
from importlib import resources

import numpy as np

from keras_xception.errors import ConfigError, ImageError

NUM_CLASSES = 1000

# File extensions read as images when a folder is searched (case-insensitive),
# by `keras-xception classify` and by the fine-tuning dataset scan.
IMAGE_EXTENSIONS = (
    ".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm",
)

# How `load_image` resizes. PIL's bilinear filter widens its support when
# shrinking, so a downscale is antialiased (unlike Keras's `load_img`, whose
# default "nearest" aliases fine texture). Bilinear is also the resize that
# Keras's own image-classification examples and keras-hub's Xception image
# converter use, so predictions stay comparable with theirs.
RESIZE_METHOD = "bilinear"


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
    if isinstance(top, bool) or not isinstance(top, (int, np.integer)):
        raise ConfigError(
            f"`top` must be an integer from 1 to {NUM_CLASSES}. Received: top={top!r}"
        )
    if not 1 <= top <= NUM_CLASSES:
        raise ConfigError(
            f"`top` must be from 1 to {NUM_CLASSES}. Received: top={top}"
        )
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


def _to_rgb(image):
    """Converts any PIL mode to RGB, compositing transparency onto white."""
    from PIL import Image

    if image.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        # 16-bit and float grayscale: scale the value range to 8 bits
        # instead of letting PIL clip everything above 255 to white. The
        # I;16 modes are 16-bit whatever their content (a dark image stays
        # dark); for 32-bit "I" and "F" the values tell the range.
        array = np.asarray(image, dtype=np.float64)
        top = array.max() if array.size else 0.0
        sixteen_bit = image.mode.startswith("I;16") or top > 255
        scale = 255.0 / (65535.0 if sixteen_bit else 255.0)
        image = Image.fromarray(np.clip(array * scale, 0, 255).astype(np.uint8), "L")
    if image.mode == "P":
        # Palette images may carry transparency in the palette.
        image = image.convert("RGBA")
    if image.mode in ("LA", "La", "PA"):
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "RGBa"):
        background = Image.new("RGB", image.size, (255, 255, 255))
        background.paste(image, mask=image.getchannel("A"))
        return background
    return image.convert("RGB")


def load_image(path, target_size=(299, 299)):
    """Loads an image file as a float32 RGB array with values in [0, 255].

    Grayscale, palette, CMYK, 16-bit and transparent images are converted to
    RGB (transparent areas become white), and the EXIF orientation is
    applied, so a photo taken in portrait comes out upright.

    Args:
        path: Path of the image file.
        target_size: `(height, width)` to resize to with antialiased
            bilinear interpolation (`RESIZE_METHOD`), or `None` to keep the
            image's size.

    Returns:
        A `float32` NumPy array of shape `(height, width, 3)`.

    Raises:
        keras_xception.errors.ImageError: (a `ValueError`) if the file is
            missing or cannot be decoded as an image. The message names the
            path.
        ValueError: If `target_size` is not `None` or two positive integers.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    if target_size is not None:
        try:
            height, width = (int(v) for v in target_size)
        except (TypeError, ValueError):
            raise ConfigError(
                "`target_size` must be (height, width) or None. "
                f"Received: target_size={target_size!r}"
            ) from None
        if height < 1 or width < 1:
            raise ConfigError(
                "`target_size` must be positive. "
                f"Received: target_size={target_size!r}"
            )
    path = os.fspath(path)
    if not os.path.exists(path):
        raise ImageError(f"Image file not found: {path!r}")
    if os.path.isdir(path):
        raise ImageError(f"Expected an image file, got a directory: {path!r}")
    try:
        with Image.open(path) as image:
            image = ImageOps.exif_transpose(image)
            image = _to_rgb(image)
            if target_size is not None and image.size != (width, height):
                image = image.resize((width, height), Image.Resampling.BILINEAR)
            return np.asarray(image, dtype=np.float32)
    except UnidentifiedImageError:
        raise ImageError(
            f"Cannot read {path!r}: it is not an image file in a format "
            "Pillow can decode."
        ) from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise ImageError(f"Cannot read image {path!r}: {err}") from None
