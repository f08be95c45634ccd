"""Multi-scale feature maps of Xception, for detection and segmentation heads.

`feature_extractor` returns a Keras model whose output is a dict of feature
maps, one per endpoint, like timm's `features_only=True` and kimm's
`feature_extractor`. The endpoints (channels-last shapes; a 299x299 input
gives 147, 74, 37, 19 and 10 pixels):

| name       | layer                  | channels | stride | where                      |
|------------|------------------------|---------:|-------:|----------------------------|
| `stride2`  | `block1_conv2_act`     |       64 |      2 | end of the stem            |
| `stride4`  | `block2_add`           |      128 |      4 | entry flow, block 2        |
| `stride8`  | `block3_add`           |      256 |      8 | entry flow, block 3        |
| `stride16` | `block12_add`          |      728 |     16 | end of the middle flow     |
| `stride32` | `block14_sepconv2_act` |     2048 |     32 | end of the exit flow       |

The stride is the nominal reduction. The stem's two 3x3 convolutions use
"valid" padding (as in the paper and Keras), so the exact size of the
stride-2 map is `(n - 1) // 2 - 2` for an input of size `n`, and each later
endpoint halves it rounding up: 224 -> 109, 55, 28, 14, 7; 256 -> 125, 63,
32, 16, 8. Any other layer of the base can be named as an endpoint too
(`"block13_sepconv2_bn"` is the last stride-16 map, with 1024 channels).

The model takes what the base takes: images preprocessed with
`keras_xception.preprocess_input` (values in [-1, 1]).
"""

from __future__ import annotations

import keras

from keras_xception.errors import ConfigError

# name -> (layer, channels, stride)
ENDPOINTS = {
    "stride2": ("block1_conv2_act", 64, 2),
    "stride4": ("block2_add", 128, 4),
    "stride8": ("block3_add", 256, 8),
    "stride16": ("block12_add", 728, 16),
    "stride32": ("block14_sepconv2_act", 2048, 32),
}


def feature_extractor(
    model_or_none=None, *, endpoints=None, weights="imagenet", input_shape=None
):
    """Returns a model that maps images to a dict of Xception feature maps.

    Args:
        model_or_none: The Xception to take features from: a model built
            by `keras_xception.Xception` (with or without its top), a
            classifier from `keras_xception.build_classifier` (its
            `xception` base is used), or `None` to build
            `Xception(include_top=False, weights=weights,
            input_shape=input_shape)`. The extractor shares the layers, and
            so the weights, of the model it is given.
        endpoints: The outputs, as a sequence of names from `ENDPOINTS`
            (`"stride2"` ... `"stride32"`) or layer names of the base, or
            `None` for all five endpoints. The output dict is keyed by
            these names.
        weights: Weights of the model built when `model_or_none` is `None`:
            `"imagenet"`, a file path, a URL or `None`.
        input_shape: Input shape of the model built when `model_or_none`
            is `None`; defaults to `(None, None, 3)`, any size of at least
            71x71.

    Returns:
        A `keras.Model` whose output is a dict `{name: feature map}`.

    Raises:
        keras_xception.errors.ConfigError: For an unknown endpoint (the
            message lists the valid names) or a model without an Xception
            base.
    """
    from keras_xception.training.classifier import base_of

    if model_or_none is None:
        from keras_xception.model import Xception

        base = Xception(include_top=False, weights=weights, input_shape=input_shape)
    else:
        base = base_of(model_or_none)
    if endpoints is None:
        endpoints = tuple(ENDPOINTS)
    elif isinstance(endpoints, str):
        endpoints = (endpoints,)
    else:
        endpoints = tuple(endpoints)
    if not endpoints:
        raise ConfigError(
            "`endpoints` must name at least one feature map. Received: ()"
        )
    layer_names = {layer.name for layer in base.layers}
    outputs = {}
    for name in endpoints:
        layer = ENDPOINTS[name][0] if name in ENDPOINTS else name
        if layer not in layer_names:
            raise ConfigError(
                f"Unknown endpoint {name!r}. Valid names: {', '.join(ENDPOINTS)}, "
                "or the name of a layer of the Xception base (e.g. "
                f"'block13_sepconv2_bn'). Received: endpoints={list(endpoints)!r}"
            )
        outputs[name] = base.get_layer(layer).output
    return keras.Model(base.input, outputs, name=f"{base.name}_features")
