"""The classifier: a new head on a frozen Xception base, and `unfreeze`.

What the classifier gets right by default:

- It takes raw RGB images with values in [0, 255], shape
  `(batch, image_size, image_size, 3)`: a `Rescaling(1/127.5, offset=-1)`
  layer named `preprocess` does `preprocess_input`'s work inside the model,
  so the saved model needs no preprocessing code.
- Augmentation (horizontal flip, small rotation and zoom) is a Keras
  preprocessing sub-model named `augmentation`; those layers are only active
  in training, so `predict` and `evaluate` see the image unchanged.
- The Xception base (a sub-model named `xception`) is called with
  `training=False`, so its BatchNormalization layers keep using their
  ImageNet moving statistics in every phase, as the Keras transfer-learning
  guide prescribes, and `unfreeze` keeps them frozen too. Letting them
  update on a small new dataset is the pitfall behind keras-team/keras#9214.
"""

from __future__ import annotations

import re

from keras_xception import architecture
from keras_xception.errors import ConfigError

DEFAULT_DROPOUT = 0.2
DEFAULT_UNFREEZE_FROM = "block13"
HEAD_LEARNING_RATE = 1e-3
FINE_TUNE_LEARNING_RATE = 1e-5

BASE_NAME = "xception"

# Block names in network order, and each layer's block.
BLOCK_NAMES = tuple(f"block{i}" for i in range(1, len(architecture.BLOCKS) + 3))
_BLOCK_OF_LAYER = re.compile(r"^(block\d+)_")


def _check_image_size(image_size):
    if isinstance(image_size, bool):
        image_size = None
    if isinstance(image_size, int):
        size = (image_size, image_size)
    else:
        try:
            size = tuple(int(v) for v in image_size)
        except (TypeError, ValueError):
            size = ()
    if len(size) != 2 or min(size) < architecture.MIN_SIZE:
        raise ConfigError(
            "`image_size` must be an integer (or a (height, width) pair) of "
            f"at least {architecture.MIN_SIZE}. Received: image_size={image_size!r}"
        )
    return size


def build_classifier(
    num_classes,
    *,
    image_size=architecture.DEFAULT_SIZE,
    weights="imagenet",
    dropout=DEFAULT_DROPOUT,
    augment=True,
    class_names=None,
    name="xception_classifier",
):
    """Builds an image classifier on a frozen Xception base.

    The model: raw RGB input in [0, 255] -> `augmentation` (training only) ->
    `preprocess` (`x / 127.5 - 1`) -> `xception` base (frozen, called with
    `training=False`) -> `avg_pool` -> `dropout` -> `predictions` (softmax,
    computed in float32 under a mixed-precision policy).

    Args:
        num_classes: Number of classes, 2 or more.
        image_size: Input height and width in pixels (an integer or a
            `(height, width)` pair), at least 71. Images fed to the model
            must have this size.
        weights: Weights of the base: `"imagenet"`, a weights file path, an
            http(s) URL, or `None` for random initialization. A random base
            is frozen and kept in inference mode like a pretrained one, so
            `None` only serves to try the pipeline; to train from scratch,
            build `Xception(weights=None, include_top=False)` with your own
            head.
        dropout: Dropout rate before the classifier, in [0, 1); `0` adds no
            dropout layer.
        augment: Whether to add the `augmentation` sub-model.
        class_names: Optional class names, one per class; kept as
            `model.class_names` and written into the file by
            `save_classifier`.
        name: The model's name.

    Returns:
        A `keras.Model` with the base frozen, not compiled.

    Raises:
        keras_xception.errors.ConfigError: For an invalid argument.
        keras_xception.errors.WeightsError: If `weights` cannot be loaded.
    """
    import keras
    from keras import layers

    from keras_xception.model import Xception, classifier_dtype

    if (
        isinstance(num_classes, bool)
        or not isinstance(num_classes, int)
        or num_classes < 2
    ):
        raise ConfigError(
            "`num_classes` must be an integer of at least 2. "
            f"Received: num_classes={num_classes!r}"
        )
    height, width = _check_image_size(image_size)
    if (
        isinstance(dropout, bool)
        or not isinstance(dropout, (int, float))
        or not (0 <= dropout < 1)
    ):
        raise ConfigError(
            f"`dropout` must be a rate in [0, 1). Received: dropout={dropout!r}"
        )
    if class_names is not None:
        class_names = tuple(str(c) for c in class_names)
        if len(class_names) != num_classes:
            raise ConfigError(
                f"`class_names` must name each of the {num_classes} classes. "
                f"Received {len(class_names)}: class_names={list(class_names)!r}"
            )

    inputs = keras.Input((height, width, 3), name="image")
    x = inputs
    if augment:
        x = keras.Sequential(
            [
                layers.RandomFlip("horizontal"),
                layers.RandomRotation(0.05),
                layers.RandomZoom(0.1),
            ],
            name="augmentation",
        )(x)
    x = layers.Rescaling(1.0 / 127.5, offset=-1.0, name="preprocess")(x)
    base = Xception(
        include_top=False,
        weights=weights,
        input_shape=(height, width, 3),
        name=BASE_NAME,
    )
    base.trainable = False
    x = base(x, training=False)
    x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    if dropout > 0:
        x = layers.Dropout(dropout, name="dropout")(x)
    outputs = layers.Dense(
        num_classes, activation="softmax", dtype=classifier_dtype(), name="predictions"
    )(x)
    model = keras.Model(inputs, outputs, name=name)
    if class_names is not None:
        model.class_names = class_names
    return model


def base_of(model):
    """The Xception base inside `model`, or `model` itself if it is one.

    Raises:
        keras_xception.errors.ConfigError: If `model` has no Xception base.
    """
    try:
        base = model.get_layer(BASE_NAME)
    except ValueError:
        base = None
    if base is not None and hasattr(base, "layers"):
        return base
    names = {layer.name for layer in model.layers}
    if "block1_conv1" in names:
        return model
    raise ConfigError(
        "Expected a model from `build_classifier` (with an 'xception' "
        f"sub-model) or an `Xception` model. Received: model={model.name!r}"
    )


def block_index(from_block):
    """The position of `from_block` (`"block13"` or `13`) in `BLOCK_NAMES`.

    Raises:
        keras_xception.errors.ConfigError: If it names no block; the message
            lists the valid ones.
    """
    value = from_block
    if isinstance(value, int) and not isinstance(value, bool):
        value = f"block{value}"
    if value not in BLOCK_NAMES:
        raise ConfigError(
            f"Unknown block {from_block!r}. Valid blocks: {', '.join(BLOCK_NAMES)}. "
            f"Received: from_block={from_block!r}"
        )
    return BLOCK_NAMES.index(value)


def unfreeze(model, from_block=DEFAULT_UNFREEZE_FROM):
    """Makes the base trainable from `from_block` on, for fine-tuning.

    Layers of `from_block` and every later block (their separable and
    residual convolutions) become trainable; earlier blocks stay frozen.
    BatchNormalization layers stay frozen everywhere, and since
    `build_classifier` calls the base with `training=False` they also keep
    running in inference mode. The head stays trainable.

    Recompile the model afterwards (with a low learning rate, e.g. 1e-5) for
    the change to take effect.

    Args:
        model: A model from `build_classifier`, or an `Xception` model.
        from_block: The first block to train, `"block1"` to `"block14"` (or
            its number). `"block13"` trains the exit flow; `"block1"`
            everything except BatchNormalization.

    Returns:
        `model`, for chaining.

    Raises:
        keras_xception.errors.ConfigError: If `from_block` is not a block
            name (the message lists the valid ones), or `model` has no
            Xception base.
    """
    from keras import layers

    start = block_index(from_block)
    base = base_of(model)
    base.trainable = True
    for layer in base.layers:
        match = _BLOCK_OF_LAYER.match(layer.name)
        trainable = bool(match) and BLOCK_NAMES.index(match.group(1)) >= start
        if isinstance(layer, layers.BatchNormalization):
            trainable = False
        layer.trainable = trainable
    return model
