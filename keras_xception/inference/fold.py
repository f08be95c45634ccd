"""BatchNormalization folding, on a copy, shared by every runtime.

`fold_batch_norm(model)` returns a new, plain functional `keras.Model` that
computes the same function with fewer layers:

- every `BatchNormalization` that directly follows a `Conv2D`,
  `SeparableConv2D` or `DepthwiseConv2D` (whose output feeds nothing else) is
  folded into that convolution's kernel (the pointwise kernel of a
  `SeparableConv2D`) plus a bias;
- every ReLU `Activation` that is then the only consumer of such a
  convolution becomes the convolution's `activation`, so the backend sees
  convolution + bias + ReLU as one fusable unit;
- a nested functional model (the Xception base of a fine-tuned classifier)
  is folded the same way, in place in the copy;
- layers that return their input unchanged at inference (`_INFERENCE_IDENTITY`:
  the random augmentation layers a fine-tuned model carries in front of its
  base, such as `build_classifier`'s `augmentation` block, and dropout) are
  left out, and so is a `keras.Sequential` made only of them. Every runtime
  calls the model with `training=False`, which Keras passes to every layer
  of a functional model, and there they do nothing.

Only standard Keras layers are used, so the result can be saved with
`model.save(...)` and reloaded with `keras.saving.load_model(...)` in a process
that never imports this package. The folding arithmetic is done in float64
and stored in float32; every runtime (`tensorflow`, `openvino`,
`onnxruntime`) starts from this float32 copy.
"""

from __future__ import annotations

import copy

import numpy as np

from keras_xception.errors import ConfigError

# Layers whose output channels are the last axis of the kernel that folding
# rescales, and the index of that kernel in `layer.get_weights()`.
_FOLDABLE = {"Conv2D": 0, "SeparableConv2D": 1, "DepthwiseConv2D": 0}


def _tensors(value):
    """Yields the config of every Keras tensor inside a serialized call argument."""
    if isinstance(value, dict):
        if value.get("class_name") == "__keras_tensor__":
            yield value["config"]
        else:
            for item in value.values():
                yield from _tensors(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _tensors(item)


def _history(value):
    """Yields every `keras_history` list inside a serialized call argument."""
    for tensor in _tensors(value):
        yield tensor["keras_history"]


def _inputs_of(entry):
    """Names of the layers feeding a serialized layer, one per tensor use."""
    return [h[0] for node in entry["inbound_nodes"] for h in _history(node)]


# Layers whose output is their input at inference (`training=False`): Keras's
# random image augmentation layers that do nothing then (their
# `transform_images` returns the images unless training; not `RandomCrop`,
# which crops at inference too) and dropout. Several of them leave random
# operations in a traced graph even then, which OpenVINO and ONNX cannot
# convert. tests/test_inference.py checks each against Keras.
_INFERENCE_IDENTITY = frozenset({
    "RandomBrightness", "RandomColorDegeneration", "RandomColorJitter",
    "RandomContrast", "RandomElasticTransform", "RandomErasing", "RandomFlip",
    "RandomGaussianBlur", "RandomGrayscale", "RandomHue", "RandomInvert",
    "RandomPerspective", "RandomRotation", "RandomSaturation", "RandomSharpness",
    "RandomShear", "RandomTranslation", "RandomZoom", "AugMix", "CutMix", "MixUp",
    "RandAugment",
    "Dropout", "SpatialDropout1D", "SpatialDropout2D", "SpatialDropout3D",
    "GaussianDropout", "GaussianNoise", "AlphaDropout",
})


def _identity_at_inference(entry):
    """Whether a serialized layer (or a Sequential of such) does nothing at
    inference: Keras's own class (not a custom layer of the same name)."""
    if entry.get("class_name") == "Sequential" and entry.get("module") == "keras":
        inner = entry.get("config", {}).get("layers", [])
        return all(_identity_at_inference(e) for e in inner
                   if e.get("class_name") != "InputLayer")
    return (entry.get("class_name") in _INFERENCE_IDENTITY
            and entry.get("module") == "keras.layers"
            and not entry.get("registered_name"))


def _compute_dtypes(layer):
    """The compute dtypes of `layer` and, for a Sequential, of its layers."""
    inner = getattr(layer, "layers", None) or []
    return {layer.compute_dtype} | {d for sub in inner for d in _compute_dtypes(sub)}


def _output_names(config):
    """The layer name of each of a functional config's outputs."""
    outputs = config["output_layers"]
    if outputs and isinstance(outputs[0], str):  # A single output.
        outputs = [outputs]
    return [name for name, _, _ in outputs]


def _skips(config, model):
    """Maps each layer left out at inference to the layer feeding it."""
    kept = set(_output_names(config))  # Outputs keep their names.
    skips = {}
    for entry in config["layers"]:
        if (entry["name"] in kept or not _identity_at_inference(entry)
                or len(entry["inbound_nodes"]) != 1):
            continue
        # A `training` recorded in the node does not matter: a functional
        # model called with `training=False` passes that to every layer.
        # Consumers are rewired to the source layer's first output of its
        # first call, so only such a source is taken.
        tensors = list(_tensors(entry["inbound_nodes"]))
        if len(tensors) != 1 or list(tensors[0]["keras_history"][1:]) != [0, 0]:
            continue
        # Keras casts a floating input to a layer's compute dtype even when
        # the layer does nothing else: left out only where that is no cast.
        if _compute_dtypes(model.get_layer(entry["name"])) != {tensors[0].get("dtype")}:
            continue
        skips[entry["name"]] = tensors[0]["keras_history"][0]
    return skips


def _channel_axis_ok(bn_config, conv_config):
    axis = bn_config["axis"]
    if isinstance(axis, (list, tuple)):
        if len(axis) != 1:
            return False
        axis = axis[0]
    if conv_config.get("data_format", "channels_last") == "channels_first":
        return axis == 1
    return axis in (-1, 3)


def _plan(config):
    """Decides which layers fold into which, from a functional config.

    Returns:
        `(folds, relus)`: `folds` maps a BatchNormalization name to the
        convolution it folds into; `relus` maps a ReLU `Activation` name to
        the convolution that absorbs it.
    """
    entries = {entry["name"]: entry for entry in config["layers"]}
    uses = {}
    for entry in config["layers"]:
        for name in _inputs_of(entry):
            uses[name] = uses.get(name, 0) + 1
    for name in _output_names(config):
        uses[name] = uses.get(name, 0) + 1

    def single_producer(entry):
        if len(entry["inbound_nodes"]) != 1:
            return None
        sources = _inputs_of(entry)
        if len(sources) != 1 or uses.get(sources[0]) != 1:
            return None
        source = entries[sources[0]]
        if len(source["inbound_nodes"]) != 1:
            return None
        return source

    folds, relus, absorbed = {}, {}, set()
    for entry in config["layers"]:
        cfg = entry["config"]
        if entry["class_name"] == "BatchNormalization":
            conv = single_producer(entry)
            if (
                conv is not None
                and conv["class_name"] in _FOLDABLE
                and conv["config"].get("activation", "linear") == "linear"
                and not cfg.get("renorm", False)
                and not cfg.get("synchronized", False)
                and _channel_axis_ok(cfg, conv["config"])
            ):
                folds[entry["name"]] = conv["name"]
        elif entry["class_name"] == "Activation" and cfg["activation"] == "relu":
            source = single_producer(entry)
            if source is None:
                continue
            # After folding, a ReLU may follow a BatchNormalization that is
            # gone; its convolution is the real producer.
            conv_name = folds.get(source["name"], source["name"])
            conv = entries[conv_name]
            if (
                conv["class_name"] in _FOLDABLE
                and conv["config"].get("activation", "linear") == "linear"
                and conv_name not in absorbed
                and (source["name"] == conv_name or uses.get(conv_name) == 1)
            ):
                relus[entry["name"]] = conv_name
                absorbed.add(conv_name)
    return folds, relus


def _rewired_config(config, folds, relus, skips):
    """The functional config with folded and skipped layers removed and edges rewired."""
    config = copy.deepcopy(config)
    alias = {**skips, **folds, **relus}

    def target(name):
        while name in alias:
            name = alias[name]
        return name

    layers = []
    for entry in config["layers"]:
        if entry["name"] in alias:
            continue
        if entry["name"] in folds.values():
            entry["config"]["use_bias"] = True
        if entry["name"] in relus.values():
            entry["config"]["activation"] = "relu"
        for node in entry["inbound_nodes"]:
            for history in _history(node):
                history[0] = target(history[0])
        layers.append(entry)
    config["layers"] = layers

    def rewire_outputs(value):
        if value and isinstance(value[0], str):
            value[0] = target(value[0])
        else:
            for item in value:
                rewire_outputs(item)

    rewire_outputs(config["output_layers"])
    return config


def _folded_weights(conv, bn):
    """Kernel(s) and bias of `conv` with `bn` applied after it (float64 math)."""
    weights = [np.asarray(w, dtype=np.float64) for w in conv.get_weights()]
    kernel_index = _FOLDABLE[type(conv).__name__]
    if conv.use_bias:
        bias = weights.pop()
    else:
        bias = 0.0
    gamma = np.asarray(bn.gamma, np.float64) if bn.scale else 1.0
    beta = np.asarray(bn.beta, np.float64) if bn.center else 0.0
    mean = np.asarray(bn.moving_mean, np.float64)
    variance = np.asarray(bn.moving_variance, np.float64)
    scale = gamma / np.sqrt(variance + bn.epsilon)
    kernel = weights[kernel_index]
    if isinstance(conv, _layer_class("DepthwiseConv2D")):
        # Output channel c * multiplier + m lives at kernel[..., c, m].
        flat = kernel.reshape(kernel.shape[:-2] + (-1,)) * scale
        weights[kernel_index] = flat.reshape(kernel.shape)
    else:
        weights[kernel_index] = kernel * scale
    weights.append((bias - mean) * scale + beta)
    return weights


# Standard layers whose initializers are attributes named as in their
# config. A copy whose every weight is assigned right after it is built
# (`_from_config`) builds them with zeros instead: Keras's random
# initializers took about half the time of building Xception.
_ZEROED = ("Conv2D", "SeparableConv2D", "DepthwiseConv2D", "Dense", "BatchNormalization")
_ZEROS = {"module": "keras.initializers", "class_name": "Zeros", "config": {},
          "registered_name": None}


class _Prebuilt:
    """Hands `keras.Model.from_config` a model this module already built."""

    def __init__(self, model):
        self.model = model

    def from_config(self, config):
        return self.model


def _from_config(config, prebuilt=None):
    """`keras.Model.from_config(config)` for a copy whose weights are all set next.

    The layers of `_ZEROED` are built with zeros and given back their own
    initializers afterwards, so that the copy's config is `config`. A nested
    model named in `prebuilt` (name -> model) is used as it is instead of
    being built again from its config.
    """
    import keras

    config, prebuilt = copy.deepcopy(config), prebuilt or {}
    custom_objects, restore = {}, []
    for entry in config["layers"]:
        if entry["name"] in prebuilt:
            key = f"keras_xception>prebuilt>{entry['name']}"
            entry["registered_name"] = key
            custom_objects[key] = _Prebuilt(prebuilt[entry["name"]])
    _zero_initializers(config, (), restore, skip=prebuilt)
    model = keras.Model.from_config(config, custom_objects=custom_objects)
    for path, own in restore:
        layer = model
        for name in path:
            layer = layer.get_layer(name)
        for key, value in own.items():
            setattr(layer, key, keras.initializers.get(value))
    return model


def _zero_initializers(config, path, restore, skip=()):
    """Sets the initializers of `_ZEROED` layers in a functional config, nested
    ones included but those named in `skip`, to zeros; appends (layer path,
    their own) to `restore`."""
    for entry in config["layers"]:
        if entry["name"] in skip:
            continue
        if _is_functional_config(entry.get("config")):
            _zero_initializers(entry["config"], (*path, entry["name"]), restore)
        elif entry.get("module") == "keras.layers" and entry.get("class_name") in _ZEROED:
            layer_config = entry["config"]
            own = {key: value for key, value in layer_config.items()
                   if key.endswith("_initializer") and value is not None}
            layer_config.update(dict.fromkeys(own, _ZEROS))
            restore.append(((*path, entry["name"]), own))


def _layer_class(name):
    import keras

    return getattr(keras.layers, name)


def _is_functional_config(config):
    return isinstance(config, dict) and "layers" in config and "output_layers" in config


def fold_batch_norm(model):
    """Returns a copy of `model` with BatchNormalization folded into convs.

    This is the model half of `optimize_for_inference`, without the runtime.
    See the module docstring for what is folded. Nested functional models
    (e.g. the base of a classifier built by `build_classifier`) are folded
    too; the input model is not modified.

    Args:
        model: A functional `keras.Model` (e.g. from `keras_xception.Xception`
            or `keras.applications.Xception`, or a classifier around one), or
            a built `keras.Sequential` (folded as the functional graph of
            its layers).

    Returns:
        A new functional `keras.Model` made of standard Keras layers. Layers
        that were not folded keep their names and weights; the input and
        output names and shapes are unchanged.

    Raises:
        keras_xception.errors.ConfigError: If `model` is not a functional
            Keras model, or a BatchNormalization and its convolution have
            different dtype policies.
    """
    import keras

    if isinstance(model, keras.Sequential) and getattr(model, "_functional", None) is not None:
        # A built Sequential is a functional graph of its layers: fold that.
        model = keras.Model(model.inputs, model.outputs, name=model.name)
    config = model.get_config() if isinstance(model, keras.Model) else None
    if not _is_functional_config(config):
        raise ConfigError(
            "optimize_for_inference needs a functional keras.Model (such as "
            f"the one `Xception(...)` returns). Received: {type(model).__name__}"
        )
    nested = {}
    for entry in config["layers"]:
        if _is_functional_config(entry.get("config")):
            inner = fold_batch_norm(model.get_layer(entry["name"]))
            nested[entry["name"]] = inner
            entry["config"] = {**inner.get_config(), "name": entry["config"]["name"]}
    skips = _skips(config, model)
    folds, relus = _plan(config)
    if any(
        layer.dtype_policy.name != model.get_layer(folds[bn]).dtype_policy.name
        for bn, layer in ((bn, model.get_layer(bn)) for bn in folds)
    ):
        raise ConfigError(
            "Cannot fold a BatchNormalization whose dtype policy differs from "
            "its convolution's."
        )
    new = _from_config(_rewired_config(config, folds, relus, skips), prebuilt=nested)
    bn_of = {conv: bn for bn, conv in folds.items()}
    for layer in new.layers:
        if not layer.weights or layer.name in nested:  # A nested one is folded already.
            continue
        if layer.name in bn_of:
            old = model.get_layer(layer.name)
            values = _folded_weights(old, model.get_layer(bn_of[layer.name]))
        else:
            values = model.get_layer(layer.name).get_weights()
        layer.set_weights(
            [np.asarray(v).astype(w.dtype) for v, w in zip(values, layer.weights)]
        )
    return new


def _set_dtype(config, policy):
    """Sets the dtype policy of every layer in a functional config, nested too."""
    for entry in config["layers"]:
        if entry["class_name"] == "InputLayer":
            continue
        if _is_functional_config(entry.get("config")):
            _set_dtype(entry["config"], policy)
        entry["config"]["dtype"] = policy


def with_dtype_policy(model, policy):
    """A copy of functional `model` whose layers all use dtype `policy`.

    Args:
        model: A functional `keras.Model` (usually from `fold_batch_norm`).
        policy: A Keras dtype policy name, e.g. `"mixed_bfloat16"`: variables
            stay float32, computations run in the policy's compute dtype.

    Returns:
        A new `keras.Model` with the same weights; its outputs have the
        policy's compute dtype.
    """
    config = copy.deepcopy(model.get_config())
    _set_dtype(config, policy)
    new = _from_config(config)
    new.set_weights(model.get_weights())
    return new
