"""The Keras-backend runtime: TensorFlow (float32 or bfloat16 through oneDNN).

`compile(model, precision)` turns a folded float32 model into one compiled
forward function. `"float32"` compiles the model itself (`compile_forward`);
`"bfloat16"` compiles a copy whose layers use Keras's `mixed_bfloat16` policy
(float32 weights, bf16 computation) and returns float32 outputs.

TensorFlow runs bf16 convolutions natively only through oneDNN: its own
(Eigen) kernels widen bf16 to float32 for every operation, which is slower
than float32. `native_bf16` therefore needs both a CPU with native bf16
(`cpu.BF16_FLAGS`) and oneDNN on in this process (`onednn_enabled`).

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

Under JAX or PyTorch the same functions compile the model with `jax.jit` or
run it under `torch.no_grad`; bfloat16 is then available on request only,
never chosen by `precision="auto"`.
"""

from __future__ import annotations

import contextlib
import os

import numpy as np

from keras_xception.inference import cpu
from keras_xception.inference.fold import _inputs_of, _is_functional_config, with_dtype_policy

NAME = "keras"


def _relus_after_add(model):
    """The ReLU `Activation` layers of `model` (nested models too) fed by an `Add`."""
    import keras

    try:
        config = model.get_config()
    except (AttributeError, NotImplementedError, TypeError):
        config = None
    # Only a functional config says what feeds what (a Sequential's does not).
    entries = config["layers"] if _is_functional_config(config) else []
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
    found = [
        layer for layer in model.layers
        if layer.name in names
        and isinstance(layer, keras.layers.Activation)
        and layer.activation is keras.activations.relu
    ]
    for layer in model.layers:
        if isinstance(layer, keras.Model):  # a nested base, e.g. a classifier's
            found.extend(_relus_after_add(layer))
    return found


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


def label():
    """The runtime as `describe()` names it, e.g. `keras/tensorflow (oneDNN on)`."""
    import keras

    backend = keras.backend.backend()
    if backend != "tensorflow":
        return f"keras/{backend}"
    return f"keras/tensorflow (oneDNN {'on' if onednn_enabled() else 'off'})"


def native_bf16(flags):
    """Whether this runtime computes bf16 natively here, and why.

    Args:
        flags: The CPU's flags (see `cpu.cpu_flags`).

    Returns:
        `(native, reason)`: a bool and one sentence.
    """
    import keras

    have = cpu.bf16_flags(flags)
    backend = keras.backend.backend()
    if not have:
        return False, cpu.no_bf16_reason()
    if backend != "tensorflow":
        return False, (f"bfloat16 is picked automatically only on the TensorFlow "
                       f"backend, not on {backend}")
    if not onednn_enabled():
        return False, ("TensorFlow's oneDNN is off (TF_ENABLE_ONEDNN_OPTS=0), "
                       "so its bf16 kernels are emulated")
    return True, f"native bf16 ({', '.join(have)}) through TensorFlow's oneDNN"


def threads():
    """Threads one forward pass may use (TensorFlow's intra-op setting)."""
    import keras

    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        return tf.config.threading.get_intra_op_parallelism_threads() or cpu.available_cores()
    return cpu.available_cores()


def compile(model, precision):  # noqa: A001 - one name across runtimes
    """A forward function for folded float32 `model` in `precision`.

    Args:
        model: A float32 functional `keras.Model` with one input.
        precision: `"float32"` or `"bfloat16"`.

    Returns:
        A function: batch (NumPy array) -> float32 NumPy outputs, nested like
        the model's.
    """
    import keras

    if precision == "bfloat16":
        model = with_dtype_policy(model, "mixed_bfloat16")
    forward = compile_forward(model)

    def call(x):
        return keras.tree.map_structure(
            lambda a: np.asarray(a, dtype=np.float32), forward(x)
        )

    return call
