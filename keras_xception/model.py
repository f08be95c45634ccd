"""The `Xception` builder: a drop-in for `keras.applications.Xception`."""

from __future__ import annotations

import contextlib
import functools
import operator
import os
import pathlib
import tempfile
import zipfile

import keras
from keras import layers

from keras_xception import architecture
from keras_xception.errors import ConfigError, WeightsError
from keras_xception.weights.urls import is_url

POOLING_MODES = (None, "avg", "max")


def _is_path(value) -> bool:
    return isinstance(value, (str, os.PathLike)) and not is_url(value)


def _check_arguments(include_top, weights, pooling, classes, classifier_activation):
    """Validates the builder's arguments as Keras does, before anything is built."""
    if not (
        weights is None
        or weights == "imagenet"
        or is_url(weights)
        or (_is_path(weights) and os.path.exists(weights))
    ):
        raise ConfigError(
            "The `weights` argument should be either `None` (random "
            "initialization), 'imagenet' (pre-training on ImageNet), the path "
            "to an existing weights file, or an http(s) URL of one. "
            f"Received: weights={weights!r}"
        )
    if pooling not in POOLING_MODES:
        raise ConfigError(
            "The `pooling` argument should be one of None, 'avg' or 'max'. "
            f"Received: pooling={pooling!r}"
        )
    # Without a top, `classes` is unused and Keras accepts any value.
    if include_top and (
        not isinstance(classes, int) or isinstance(classes, bool) or classes < 1
    ):
        raise ConfigError(
            "The `classes` argument should be a positive integer. "
            f"Received: classes={classes!r}"
        )
    if weights == "imagenet" and include_top and classes != 1000:
        raise ConfigError(
            "If using `weights='imagenet'` with `include_top=True`, "
            f"`classes` should be 1000. Received: classes={classes}"
        )
    if include_top and weights is not None:
        activation = keras.activations.get(classifier_activation)
        allowed = {keras.activations.get("softmax"), keras.activations.get(None)}
        if activation not in allowed:
            raise ConfigError(
                "Only `None` and `softmax` activations are allowed for the "
                "`classifier_activation` argument when using pretrained "
                "weights, with `include_top=True`; Received: "
                f"classifier_activation={classifier_activation!r}"
            )
    elif include_top:
        try:
            keras.activations.get(classifier_activation)
        except ValueError as err:
            raise ConfigError(
                f"Unknown `classifier_activation`. {err} "
                f"Received: classifier_activation={classifier_activation!r}"
            ) from None


def _input_shape(input_shape, include_top, weights, data_format):
    """Computes and validates the input shape (Keras's `obtain_input_shape`)."""
    size = architecture.DEFAULT_SIZE
    imagenet = weights == "imagenet"
    channels_first = data_format == "channels_first"
    if input_shape is not None:
        try:
            input_shape = tuple(
                None if d is None else operator.index(d) for d in input_shape
            )
        except (TypeError, ValueError):
            raise ConfigError(
                "`input_shape` must be a tuple of three integers (or None for "
                f"a free height or width). Received: input_shape={input_shape!r}"
            ) from None
        if len(input_shape) != 3:
            raise ConfigError(
                "`input_shape` must be a tuple of three integers. "
                f"Received: input_shape={input_shape}"
            )
    default_channels = 3
    if input_shape is not None and not imagenet:
        default_channels = input_shape[0] if channels_first else input_shape[-1]
    if channels_first:
        default_shape = (default_channels, size, size)
    else:
        default_shape = (size, size, default_channels)

    if imagenet and include_top:
        if input_shape is not None and input_shape != default_shape:
            raise ConfigError(
                "When setting `include_top=True` and loading `imagenet` "
                f"weights, `input_shape` should be {default_shape}. "
                f"Received: input_shape={input_shape}"
            )
        return default_shape
    if input_shape is None:
        if include_top:
            return default_shape
        return (3, None, None) if channels_first else (None, None, 3)

    channels = input_shape[0] if channels_first else input_shape[-1]
    spatial = input_shape[1:] if channels_first else input_shape[:2]
    if channels is None or channels < 1:
        raise ConfigError(
            "The number of input channels must be a positive integer. "
            f"Received: input_shape={input_shape}"
        )
    if imagenet and channels != 3:
        raise ConfigError(
            "The input must have 3 channels to load `imagenet` weights; "
            f"Received: input_shape={input_shape}"
        )
    for dim in spatial:
        if dim is not None and dim < architecture.MIN_SIZE:
            raise ConfigError(
                f"Input size must be at least {architecture.MIN_SIZE}x"
                f"{architecture.MIN_SIZE}; Received: input_shape={input_shape}"
            )
    if include_top and None in input_shape:
        raise ConfigError(
            "If `include_top` is True, you should specify a static "
            f"`input_shape`. Received: input_shape={input_shape}"
        )
    return input_shape


def classifier_dtype():
    """float32 under a mixed-precision policy, so probabilities sum to 1.

    Only mixed policies (float32 variables, 16-bit compute): under a plain
    `float16` or `bfloat16` policy the layer follows it, as in Keras.
    """
    policy = keras.config.dtype_policy()
    if policy.compute_dtype in ("float16", "bfloat16") and (
        policy.variable_dtype == "float32"
    ):
        return "float32"
    return None


# The random initializers of Xception's layers (Keras's default for each).
# A model whose weights are loaded next is built with zeros in their place,
# which is about half as much work, and given them back once loaded
# (`_restore_initializers`), so that its config is the same.
_RANDOM_INITIALIZERS = {
    "Conv2D": ("kernel_initializer",),
    "SeparableConv2D": ("depthwise_initializer", "pointwise_initializer"),
    "Dense": ("kernel_initializer",),
}
_DEFAULT_INITIALIZER = "glorot_uniform"


def _built(cls, fill, built):
    """`cls` with its random initializers set to `fill`; `built` collects the layers."""
    names = _RANDOM_INITIALIZERS[cls.__name__]

    def make(*args, **kwargs):
        layer = cls(*args, **dict.fromkeys(names, fill), **kwargs)
        built.append(layer)
        return layer

    return make


def _restore_initializers(built):
    for layer in built:
        for name in _RANDOM_INITIALIZERS[type(layer).__name__]:
            setattr(layer, name, keras.initializers.get(_DEFAULT_INITIALIZER))


def _layers_for(data_format, fill, built):
    """Layer shortcuts with the settings every Xception layer shares."""
    axis = 1 if data_format == "channels_first" else -1
    return (
        functools.partial(
            _built(layers.Conv2D, fill, built), use_bias=False, data_format=data_format
        ),
        functools.partial(
            _built(layers.SeparableConv2D, fill, built),
            kernel_size=(3, 3),
            padding="same",
            use_bias=False,
            data_format=data_format,
        ),
        functools.partial(layers.BatchNormalization, axis=axis),
        functools.partial(layers.Activation, "relu"),
    )


def _features(x, data_format, fill, built):
    """Applies blocks 1-14 to `x`, driven by `architecture`'s tables."""
    conv, sepconv, bn, relu = _layers_for(data_format, fill, built)

    for name, filters, strides in architecture.STEM:
        x = conv(filters, (3, 3), strides=strides, name=name)(x)
        x = bn(name=f"{name}_bn")(x)
        x = relu(name=f"{name}_act")(x)

    for block in architecture.BLOCKS:
        shortcut = x
        if block.downsample:
            conv_name, bn_name = architecture.residual_names(block)
            shortcut = conv(
                block.filters[-1],
                (1, 1),
                strides=(2, 2),
                padding="same",
                name=conv_name,
            )(x)
            shortcut = bn(name=bn_name)(shortcut)
        for i, filters in enumerate(block.filters, start=1):
            prefix = f"{block.name}_sepconv{i}"
            if i > 1 or block.relu_first:
                x = relu(name=f"{prefix}_act")(x)
            x = sepconv(filters, name=prefix)(x)
            x = bn(name=f"{prefix}_bn")(x)
        if block.downsample:
            x = layers.MaxPooling2D(
                (3, 3),
                strides=(2, 2),
                padding="same",
                data_format=data_format,
                name=f"{block.name}_pool",
            )(x)
        x = layers.Add(name=f"{block.name}_add")([x, shortcut])

    for name, filters in architecture.EXIT:
        x = sepconv(filters, name=name)(x)
        x = bn(name=f"{name}_bn")(x)
        x = relu(name=f"{name}_act")(x)
    return x


def Xception(
    include_top=True,
    weights="imagenet",
    input_tensor=None,
    input_shape=None,
    pooling=None,
    classes=1000,
    classifier_activation="softmax",
    name="xception",
):
    """Instantiates the Xception architecture.

    Reference:
    - [Xception: Deep Learning with Depthwise Separable Convolutions](
        https://arxiv.org/abs/1610.02357) (CVPR 2017)

    The signature, defaults and argument checks are those of
    `keras.applications.Xception`, and the layers are the same (same names,
    same order, same parameter count), so code and weight files written for
    that function work unchanged. The differences:

    - the residual 1x1 convolutions and their BatchNormalization layers are
      named (`block2_residual_conv`, `block2_residual_bn`, ...) instead of
      taking process-dependent automatic names, and so are the residual
      additions (`block2_add`, ...);
    - under a `mixed_float16` or `mixed_bfloat16` policy the `predictions`
      layer computes in float32, so probabilities are float32 and sum to 1;
    - `weights` also takes an http(s) URL, and every weights file is checked
      before loading: the wrong variant or another architecture raises a
      `ValueError` that says what the file holds.

    The default input size is 299x299. Inputs must be preprocessed with
    `keras_xception.preprocess_input`, which scales pixels to [-1, 1].

    Args:
        include_top: Whether to include the global average pooling and the
            fully-connected `predictions` layer at the top of the network.
        weights: One of `None` (random initialization), `"imagenet"`
            (pre-training on ImageNet, downloaded and verified by
            `keras_xception.weights`), the path to a weights file (an
            official Keras 2 HDF5 file, a Keras 3 `.weights.h5` file, or a
            `.keras` model file, whose weights are read), or an http(s) URL
            of one.
        input_tensor: Optional Keras tensor (i.e. output of `keras.Input()`)
            to use as image input for the model.
        input_shape: Optional shape tuple, only to be specified if
            `include_top` is `False` (otherwise the input shape has to be
            `(299, 299, 3)` with ImageNet weights). Height and width must be
            at least 71 (or `None`); the channel count must be 3 with
            `"imagenet"` weights and may be any positive number otherwise.
        pooling: Optional pooling mode for feature extraction when
            `include_top` is `False`: `None` (the 4D output of the last
            block), `"avg"` (global average pooling) or `"max"` (global max
            pooling).
        classes: Number of classes, only to be specified if `include_top` is
            `True` and no ImageNet weights are loaded. Defaults to `1000`.
        classifier_activation: A `str` or callable; the activation of the
            `predictions` layer. Ignored unless `include_top=True`. With
            pretrained weights it can only be `None` or `"softmax"`.
        name: The name of the model.

    Returns:
        A `keras.Model` instance.

    Raises:
        ValueError: For an invalid argument, or a weights file that does not
            fit the model (a `keras_xception.errors.WeightsError`).
    """
    _check_arguments(include_top, weights, pooling, classes, classifier_activation)
    data_format = keras.config.image_data_format()
    input_shape = _input_shape(input_shape, include_top, weights, data_format)

    if input_tensor is None:
        img_input = layers.Input(shape=input_shape)
    elif not keras.backend.is_keras_tensor(input_tensor):
        img_input = layers.Input(tensor=input_tensor, shape=input_shape)
    else:
        img_input = input_tensor

    fill = _DEFAULT_INITIALIZER if weights is None else "zeros"
    built = []
    x = _features(img_input, data_format, fill, built)
    if include_top:
        x = layers.GlobalAveragePooling2D(data_format=data_format, name="avg_pool")(x)
        x = _built(layers.Dense, fill, built)(
            classes,
            activation=classifier_activation,
            dtype=classifier_dtype(),
            name="predictions",
        )(x)
    elif pooling == "avg":
        x = layers.GlobalAveragePooling2D(data_format=data_format, name="avg_pool")(x)
    elif pooling == "max":
        x = layers.GlobalMaxPooling2D(data_format=data_format, name="max_pool")(x)

    if input_tensor is not None:
        inputs = keras.utils.get_source_inputs(input_tensor)
    else:
        inputs = img_input
    model = keras.Model(inputs, x, name=name)

    if weights is not None:
        load_weights(model, weights, include_top=include_top)
        _restore_initializers(built)
    return model


@contextlib.contextmanager
def _weights_file(path):
    """The HDF5 weights file for `path`, extracted from a `.keras` archive.

    `keras.Model.load_weights` also reads the weights inside a `.keras`
    model file, so `Xception(weights="model.keras")` does too.
    """
    path = pathlib.Path(path)
    if path.is_dir() or not zipfile.is_zipfile(path):
        yield path
        return
    with tempfile.TemporaryDirectory() as tmp:
        # Named after the archive, so validation errors point at it.
        inner = pathlib.Path(tmp, path.name, "model.weights.h5")
        inner.parent.mkdir()
        try:
            with zipfile.ZipFile(path) as archive:
                inner.write_bytes(archive.read("model.weights.h5"))
        except (KeyError, zipfile.BadZipFile) as err:
            raise WeightsError(
                f"{path} is a zip archive without `model.weights.h5`, so not "
                f"a `.keras` model file: {err}"
            ) from None
        yield inner


def load_weights(model, weights, *, include_top):
    """Loads `weights` into an Xception `model` built by this package.

    The file is validated against the model's architecture first (variant,
    classes, input channels), so a wrong file fails with a message that says
    what it holds instead of a shape error halfway through.

    Args:
        model: A model returned by `Xception`.
        weights: `"imagenet"`, a local path or an http(s) URL.
        include_top: Whether `model` has the `predictions` layer.

    Raises:
        keras_xception.errors.WeightsError: If the file cannot be fetched or
            does not fit the model.
    """
    from keras_xception import weights as weights_lib

    first = model.get_layer("block1_conv1")
    channels = first.kernel.shape[2]
    classes = model.get_layer("predictions").units if include_top else 1000
    path = weights_lib.resolve(weights, include_top=include_top)
    layout = architecture.weight_layout(
        include_top, classes=classes, channels=channels
    )
    with _weights_file(path) as path:
        arrays = weights_lib.read_weights(
            path, include_top=include_top, classes=classes, channels=channels
        )
    for entry, values in zip(layout, arrays):
        model.get_layer(entry.name).set_weights(values)
