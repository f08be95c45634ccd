"""Fast inference: fold BatchNormalization away and predict without overhead.

`optimize_for_inference(model)` returns a new, plain functional
`keras.Model` that computes the same function with fewer layers:

- every `BatchNormalization` that directly follows a `Conv2D`,
  `SeparableConv2D` or `DepthwiseConv2D` (whose output feeds nothing else) is
  folded into that convolution's kernel (the pointwise kernel of a
  `SeparableConv2D`) plus a bias;
- every ReLU `Activation` that is then the only consumer of such a
  convolution becomes the convolution's `activation`, so the backend sees
  convolution + bias + ReLU as one fusable unit.

Only standard Keras layers are used, so the result can be saved with
`model.save(...)` and reloaded with `keras.saving.load_model(...)` in a process
that never imports this package.

Fast `predict`. Keras's `Model.predict` builds a data pipeline (`tf.data`
under TensorFlow), a callback list and a progress bar on every call: about
60 ms on a 2-core CPU, half the cost of a single 299x299 image. The returned
model keeps `Model.predict` unchanged (it is the API Keras users rely on,
with callbacks, generators and datasets) but gets its `predict` replaced *on
this instance only* by `fast_predict`, which, for in-memory arrays, slices
the batches itself and runs one compiled forward function per batch (a
`tf.function` under TensorFlow, `jax.jit` under JAX, `torch.no_grad` under
PyTorch). Any other input (datasets, generators, callbacks, `steps`) falls
through to `Model.predict`. The replacement is an instance attribute, not a
subclass: the model's class stays `keras.Model` (Functional), its config and
saved file are those of a plain model, and a reloaded copy simply predicts
with Keras's own `predict` (wrap it again with `optimize_for_inference` to
get the fast path back; folding an already folded model is a no-op).

Runtime (TensorFlow's oneDNN). TensorFlow turns its oneDNN kernels on by
default only on Linux CPUs with AVX512_VNNI, AVX512_BF16, AVX_VNNI or AMX;
elsewhere (e.g. x86 CPUs with AVX2 and FMA only) they stay off unless
`TF_ENABLE_ONEDNN_OPTS=1` is set before TensorFlow is imported. On a 2-core
AVX2 EPYC, turning them on made Keras's `predict` of this model about 1.3x
faster (the README's benchmark). A library must not change a process-wide
setting behind its user's back, and by the time this module runs TensorFlow
is usually imported already, so this module does not touch it:
`runtime_info()` reports the state and `keras-xception` (the command line)
turns oneDNN on by default before TensorFlow loads. Python users who want the
speed set `TF_ENABLE_ONEDNN_OPTS=1` in their environment.
"""

from __future__ import annotations

import contextlib
import copy
import os

import numpy as np

from keras_xception.errors import ConfigError

# Layers whose output channels are the last axis of the kernel that folding
# rescales, and the index of that kernel in `layer.get_weights()`.
_FOLDABLE = {"Conv2D": 0, "SeparableConv2D": 1, "DepthwiseConv2D": 0}


def _history(value):
    """Yields every `keras_history` list inside a serialized call argument."""
    if isinstance(value, dict):
        if value.get("class_name") == "__keras_tensor__":
            yield value["config"]["keras_history"]
        else:
            for item in value.values():
                yield from _history(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _history(item)


def _inputs_of(entry):
    """Names of the layers feeding a serialized layer, one per tensor use."""
    return [h[0] for node in entry["inbound_nodes"] for h in _history(node)]


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
    outputs = config["output_layers"]
    if outputs and isinstance(outputs[0], str):
        outputs = [outputs]
    for name, _, _ in outputs:
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


def _rewired_config(config, folds, relus):
    """The functional config with folded layers removed and edges rewired."""
    config = copy.deepcopy(config)
    alias = {**folds, **relus}

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


def _layer_class(name):
    import keras

    return getattr(keras.layers, name)


def fold_batch_norm(model):
    """Returns a copy of `model` with BatchNormalization folded into convs.

    This is the model half of `optimize_for_inference`, without the fast
    `predict`. See the module docstring for what is folded.

    Args:
        model: A functional `keras.Model` (e.g. from `keras_xception.Xception`
            or `keras.applications.Xception`).

    Returns:
        A new functional `keras.Model` made of standard Keras layers. Layers
        that were not folded keep their names and weights; the input and
        output names and shapes are unchanged.

    Raises:
        keras_xception.errors.ConfigError: If `model` is not a functional
            Keras model.
    """
    import keras

    config = model.get_config() if isinstance(model, keras.Model) else None
    if not config or "layers" not in config or "output_layers" not in config:
        raise ConfigError(
            "optimize_for_inference needs a functional keras.Model (such as "
            f"the one `Xception(...)` returns). Received: {type(model).__name__}"
        )
    folds, relus = _plan(config)
    if any(
        layer.dtype_policy.name != model.get_layer(folds[bn]).dtype_policy.name
        for bn, layer in ((bn, model.get_layer(bn)) for bn in folds)
    ):
        raise ConfigError(
            "Cannot fold a BatchNormalization whose dtype policy differs from "
            "its convolution's."
        )
    new = keras.Model.from_config(_rewired_config(config, folds, relus))
    bn_of = {conv: bn for bn, conv in folds.items()}
    for layer in new.layers:
        if not layer.weights:
            continue
        old = model.get_layer(layer.name)
        if layer.name in bn_of:
            values = _folded_weights(old, model.get_layer(bn_of[layer.name]))
        else:
            values = old.get_weights()
        layer.set_weights(
            [np.asarray(v).astype(w.dtype) for v, w in zip(values, layer.weights)]
        )
    return new


def _relus_after_add(model):
    """The top-level ReLU `Activation` layers of `model` fed by an `Add`."""
    import keras

    try:
        entries = model.get_config()["layers"]
    except (AttributeError, KeyError, NotImplementedError, TypeError):
        return []
    classes = {entry["name"]: entry["class_name"] for entry in entries}
    names = set()
    for entry in entries:
        sources = _inputs_of(entry)
        if (
            entry["class_name"] == "Activation"
            and len(sources) == 1
            and classes.get(sources[0]) == "Add"
        ):
            names.add(entry["name"])
    return [
        layer for layer in model.layers
        if layer.name in names
        and isinstance(layer, keras.layers.Activation)
        and layer.activation is keras.activations.relu
    ]


@contextlib.contextmanager
def _relu_after_add_as_maximum(model):
    """While tracing, computes ReLUs that follow an `Add` as `maximum(x, 0)`.

    Same values (NaN and signed zeros included), different TensorFlow op.
    With oneDNN on, grappler's remapper fuses Conv2D + BiasAdd + Add + Relu
    without checking that the Add has no other consumer; in a residual
    network it does (the next block's Add), the rewrite fails ("remapper
    failed: INVALID_ARGUMENT: Mutation::Apply error") and TensorFlow drops
    every remapper fusion of the graph. Without a Relu after the Add the
    pattern does not match, and the other fusions (Conv2D + BiasAdd + Relu)
    apply.
    """
    import keras

    layers = _relus_after_add(model)

    def relu_as_maximum(x):
        return keras.ops.maximum(x, keras.ops.zeros((), dtype=x.dtype))

    for layer in layers:
        layer.activation = relu_as_maximum
    try:
        yield
    finally:
        for layer in layers:
            layer.activation = keras.activations.relu


def compile_forward(model):
    """A compiled inference function for `model` under the current backend.

    Args:
        model: A `keras.Model` with one input.

    Returns:
        A function taking one batch (a NumPy array or backend tensor) and
        returning the model's outputs for it as NumPy arrays (nested like the
        model's outputs), computed with `training=False`. It is compiled once
        per input signature: a `tf.function` with a free batch dimension
        under TensorFlow (no XLA: on CPUs, XLA's depthwise convolutions made
        this model several times slower), `jax.jit` under JAX (one
        compilation per batch shape), and eager `torch.no_grad` under
        PyTorch. Under any other backend it calls the model eagerly.
    """
    import keras

    backend = keras.backend.backend()
    to_numpy = keras.ops.convert_to_numpy

    def numpy_tree(outputs):
        return keras.tree.map_structure(to_numpy, outputs)

    if backend == "tensorflow":
        import tensorflow as tf

        spec = tf.TensorSpec((None,) + tuple(model.inputs[0].shape[1:]),
                             model.inputs[0].dtype)

        @tf.function(input_signature=[spec], autograph=False)
        def forward(x):
            return model(x, training=False)

        # Trace now, with ReLUs that follow an Add written as Maximum.
        with _relu_after_add_as_maximum(model):
            forward = forward.get_concrete_function()
        return lambda x: numpy_tree(forward(x))
    if backend == "jax":
        import jax

        @jax.jit
        def forward(trainable, non_trainable, x):
            return model.stateless_call(trainable, non_trainable, x, training=False)[0]

        def call(x):
            # Read the variables on every call, so later weight changes count.
            trainable = [v.value for v in model.trainable_variables]
            non_trainable = [v.value for v in model.non_trainable_variables]
            return numpy_tree(forward(trainable, non_trainable, x))

        return call
    if backend == "torch":
        import torch

        def call(x):
            with torch.no_grad():
                return numpy_tree(model(x, training=False))

        return call
    return lambda x: numpy_tree(model(x, training=False))


def _is_batch_array(model, x):
    """Whether `x` is one in-memory batch array the fast path can slice."""
    if len(model.inputs) != 1:
        return False
    if isinstance(x, np.ndarray):
        return x.ndim == len(model.inputs[0].shape)
    import keras

    return keras.ops.is_tensor(x) and len(x.shape) == len(model.inputs[0].shape)


def attach_fast_predict(model):
    """Replaces `model.predict`, on this instance only, with `fast_predict`.

    The replacement takes `Model.predict`'s arguments. For a NumPy array or
    a backend tensor (and `steps=None`, no `callbacks`, `verbose` of `0` or
    `"auto"`) it slices batches of `batch_size` (default 32) and runs the
    function from `compile_forward` on each: no data pipeline, callbacks or
    progress bar. Anything else (a `tf.data.Dataset`, a generator or
    `PyDataset`, callbacks, `steps`, or `verbose=1` for a progress bar) is
    passed to Keras's `Model.predict` unchanged.

    Args:
        model: A single-input `keras.Model`.

    Returns:
        `model`, with its `predict` replaced.
    """
    import keras

    keras_predict = type(model).predict.__get__(model)
    forward = []  # compiled lazily, on the first fast call

    def predict(x, batch_size=None, verbose="auto", steps=None, callbacks=None):
        if (
            steps is not None
            or callbacks
            or verbose not in (0, "auto")
            or not _is_batch_array(model, x)
        ):
            return keras_predict(
                x, batch_size=batch_size, verbose=verbose, steps=steps,
                callbacks=callbacks,
            )
        if batch_size is None:
            batch_size = 32
        if isinstance(x, np.ndarray):
            x = x.astype(model.inputs[0].dtype, copy=False)
        if not forward:
            forward.append(compile_forward(model))
        outputs = [
            forward[0](x[start:start + batch_size])
            for start in range(0, int(x.shape[0]), batch_size)
        ]
        if not outputs:
            return keras_predict(x, batch_size=batch_size, verbose=0)
        return keras.tree.map_structure(
            lambda *parts: np.concatenate(parts, axis=0), *outputs
        )

    predict.__doc__ = attach_fast_predict.__doc__
    model.predict = predict
    return model


def optimize_for_inference(model):
    """Returns a faster copy of `model` for inference.

    Folds each BatchNormalization into the convolution before it (and each
    following ReLU into that convolution's activation), then gives the new
    model a `predict` that runs a compiled function directly on in-memory
    batches (see `attach_fast_predict`). The input model is not modified.

    The result is a plain functional `keras.Model` of standard layers: it
    can be saved with `model.save(...)` and reloaded without
    `custom_objects`. A reloaded copy predicts with Keras's own `predict`;
    pass it through `optimize_for_inference` again for the fast one.

    Outputs equal the original's up to float rounding (softmax
    probabilities agree within 1e-4 with the ImageNet weights). Dropout and
    other training-only behaviour is unaffected: `training=False` is used.

    This function does not change TensorFlow's oneDNN setting (a
    process-wide environment variable read when TensorFlow is imported);
    on CPUs where TensorFlow leaves oneDNN off (e.g. AVX2-only x86), set
    `TF_ENABLE_ONEDNN_OPTS=1` before importing TensorFlow for more fp32 speed
    (see `runtime_info`). The `keras-xception` command line does this by
    default.

    Args:
        model: A functional `keras.Model`, e.g. from `keras_xception.Xception`
            or `keras.applications.Xception`, with any `include_top` and
            `pooling`.

    Returns:
        A new `keras.Model`.

    Raises:
        keras_xception.errors.ConfigError: If `model` is not a functional
            Keras model.
    """
    return attach_fast_predict(fold_batch_norm(model))


def onednn_enabled():
    """Whether TensorFlow runs its oneDNN kernels in this process.

    TensorFlow decides once, when it is imported: `TF_ENABLE_ONEDNN_OPTS`
    set to `0`/`false` or `1`/`true` forces the choice; unset, oneDNN is on
    for Linux CPUs with AVX512_VNNI, AVX512_BF16, AVX_VNNI or AMX (e.g. AMD
    Zen 4 and recent Intel Xeons) and off otherwise (e.g. CPUs with AVX2 and
    FMA only). The answer is TensorFlow's own decision, not a copy of that
    rule: TensorFlow has no public API for it, so this calls `IsMklEnabled`
    from its `_pywrap_util_port` module (the check that prints the "oneDNN
    custom operations are on" notice, also used by TensorFlow's own tests).

    Returns:
        `True` or `False` under the TensorFlow backend (TensorFlow is
        imported if it is not yet); `None` under other backends, which do not
        use TensorFlow's kernels, or if this TensorFlow no longer has that
        check.
    """
    import keras

    if keras.backend.backend() != "tensorflow":
        return None
    try:
        from tensorflow.python.util import _pywrap_util_port
    except ImportError:
        return None
    is_enabled = getattr(_pywrap_util_port, "IsMklEnabled", None)
    return bool(is_enabled()) if is_enabled is not None else None


def runtime_info():
    """The runtime settings that decide CPU speed, for logs and benchmarks.

    Returns:
        A dict: `backend`; `onednn`, whether TensorFlow's oneDNN kernels are
        in use (see `onednn_enabled`: `True`/`False`, `None` outside
        TensorFlow); `onednn_env`, the value of `TF_ENABLE_ONEDNN_OPTS` (`None`
        when unset, which leaves the choice to TensorFlow's CPU rule); and
        the Keras dtype policy.
    """
    import keras

    return {
        "backend": keras.backend.backend(),
        "onednn": onednn_enabled(),
        "onednn_env": os.environ.get("TF_ENABLE_ONEDNN_OPTS"),
        "dtype_policy": keras.config.dtype_policy().name,
    }
