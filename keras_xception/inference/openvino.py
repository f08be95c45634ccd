"""The OpenVINO runtime (the `openvino` extra), float32 or bfloat16.

The folded float32 model is traced once as a TensorFlow function with a free
batch dimension, converted in memory with `openvino.convert_model`, and
compiled for the CPU with `INFERENCE_PRECISION_HINT` set to `f32` or `bf16`
(OpenVINO's own default is bf16 wherever the CPU has it natively). Needs the
TensorFlow backend; OpenVINO is imported only inside this module's functions.
"""

from __future__ import annotations

import contextlib

import numpy as np

from keras_xception.checks import install_hint, missing, require, require_tensorflow_backend
from keras_xception.inference import cpu

NAME = "openvino"
EXTRA = install_hint("openvino")
_HINTS = {"float32": "f32", "bfloat16": "bf16"}


def installed():
    """Whether OpenVINO can be imported."""
    return not missing("openvino")


def _require():
    require_tensorflow_backend("openvino", "converts the model")
    require("openvino", "runtime='openvino'")
    import openvino

    return openvino


def label():
    """The runtime as `describe()` names it, with OpenVINO's version."""
    return f"openvino {_require().__version__.split('-')[0]}"


def native_bf16(flags):
    """Whether OpenVINO computes bf16 natively on this CPU, and why."""
    have = cpu.bf16_flags(flags)
    if not have:
        return False, cpu.no_bf16_reason()
    return True, f"native bf16 ({', '.join(have)}) through OpenVINO"


@contextlib.contextmanager
def no_telemetry():
    """OpenVINO's converter without its usage statistics, for the block.

    `openvino.convert_model` sends usage events over the network from a
    forked process, which this package's users did not ask for. Offline, that
    process can wait for ever on a name lookup, and Python then waits for it
    at exit: the job's work is done, but it never ends. OpenVINO ships a
    do-nothing stand-in (`telemetry_stub`), which it uses itself when the
    telemetry package is missing; it is put in the converter's place here,
    and the real one back afterwards.
    """
    try:
        from openvino.tools.ovc import convert_impl, telemetry_stub, telemetry_utils, utils
    except ImportError:
        yield
        return
    modules = [m for m in (convert_impl, telemetry_utils, utils) if hasattr(m, "tm")]
    saved = [m.tm for m in modules]
    for module in modules:
        module.tm = telemetry_stub
    try:
        yield
    finally:
        for module, tm in zip(modules, saved):
            module.tm = tm


def convert(model):
    """The folded `model` as an in-memory `openvino.Model`.

    Raises:
        KeyboardInterrupt: If Ctrl-C was pressed while converting (OpenVINO
            reports it as a `RuntimeError` naming `KeyboardInterrupt`).
    """
    import tensorflow as tf

    ov = _require()
    spec = tf.TensorSpec((None,) + tuple(model.inputs[0].shape[1:]),
                         model.inputs[0].dtype)
    function = tf.function(lambda x: model(x, training=False),
                           input_signature=[spec], autograph=False)
    concrete = function.get_concrete_function()
    try:
        with no_telemetry():
            return ov.convert_model(concrete)
    except RuntimeError as err:
        if "KeyboardInterrupt" in str(err):
            raise KeyboardInterrupt from None
        raise


def compile(model, precision):  # noqa: A001 - one name across runtimes
    """A forward function for folded float32 `model` in `precision`.

    Args:
        model: A float32 functional `keras.Model` with one input.
        precision: `"float32"` or `"bfloat16"`.

    Returns:
        A function: batch (NumPy array) -> float32 NumPy outputs, nested like
        the model's. It holds one infer request: call it from one thread at
        a time. Its `threads` attribute is OpenVINO's thread count.
    """
    import keras

    from keras_xception.errors import ConfigError

    ov = _require()
    cap = cpu.avx2_cap()
    if precision == "bfloat16" and cap:
        variable, isa = cap
        raise ConfigError(
            f"OpenVINO cannot compile a bfloat16 model while {variable}={isa} caps "
            "oneDNN below bf16: ask for precision 'float32' (or 'auto'), or unset "
            f"{variable}"
        )
    compiled = ov.Core().compile_model(
        convert(model), "CPU", {"INFERENCE_PRECISION_HINT": _HINTS[precision]}
    )
    request = compiled.create_infer_request()
    count = len(compiled.outputs)
    structure = model.outputs if len(model.outputs) > 1 else model.outputs[0]

    def forward(x):
        request.infer({0: np.ascontiguousarray(x, dtype=np.float32)})
        outputs = [np.array(request.get_output_tensor(i).data, dtype=np.float32)
                   for i in range(count)]
        return keras.tree.pack_sequence_as(structure, outputs)

    forward.threads = int(compiled.get_property("INFERENCE_NUM_THREADS"))
    return forward


def threads():
    """OpenVINO's default thread count for the CPU (before compiling)."""
    return cpu.available_cores()
