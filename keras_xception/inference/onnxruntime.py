"""The ONNX Runtime runtime (the `onnxruntime` extra), float32 only.

The folded model is exported to ONNX with Keras's exporter (tf2onnx, from
the `export` extra) in a temporary folder and run by ONNX Runtime's CPU
execution provider, which has no bf16 convolutions: this runtime is float32
only. Needs the TensorFlow backend; ONNX Runtime is imported only inside
this module's functions.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import threading
import warnings

import numpy as np

from keras_xception.checks import install_hint, missing, require, require_tensorflow_backend
from keras_xception.errors import ConfigError
from keras_xception.inference import cpu

NAME = "onnxruntime"
EXTRA = install_hint("onnxruntime")


@contextlib.contextmanager
def tf2onnx_unwarned():
    """Keras's exporter to ONNX without the one warning that is no concern of
    this package's users: tf2onnx (through Keras's patch of it) tests
    `hasattr(np, "object")`, which NumPy answers with a FutureWarning."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*np.object", category=FutureWarning)
        yield


# tf2onnx deep-copies the whole graph before each of its graph optimizers
# (a dozen, in several passes) so that one that raises can be skipped: a
# quarter of Xception's conversion (2.3 of 9.6 CPU-s on a 2-vCPU Zen 4). With
# this variable set (tf2onnx 1.17 reads only whether it is, not its value)
# it does not copy, and an optimizer that raises ends the conversion;
# `export_onnx` then converts again the careful way.
_CATCH_ERRORS = "TF2ONNX_CATCH_ERRORS"
_EXPORTING = threading.Lock()  # One conversion at a time sets the variable.


def export_onnx(model, path, input_signature):
    """Writes `model` to the ONNX file `path` with Keras's exporter (tf2onnx).

    First without tf2onnx's copy of the graph before each optimizer; if that
    conversion fails (other than for memory or a file), again with it, and
    an optimizer that fails is then skipped, as tf2onnx alone does; the
    first error is chained to a second one. Conversions in this process run
    one at a time. A `TF2ONNX_CATCH_ERRORS` that the caller set is left as
    it is, and then tf2onnx alone decides (any value turns its copies off).

    Args:
        model: A Keras model (TensorFlow backend).
        path: The `.onnx` file to write.
        input_signature: As for `model.export`.
    """
    def convert():
        with tf2onnx_unwarned():
            model.export(str(path), format="onnx", verbose=False,
                         input_signature=input_signature)

    with _EXPORTING:
        if _CATCH_ERRORS in os.environ:
            convert()
            return
        os.environ[_CATCH_ERRORS] = "FALSE"
        try:
            convert()
        except (MemoryError, OSError):
            raise
        except Exception:  # noqa: BLE001 - an optimizer's error: convert again
            os.environ.pop(_CATCH_ERRORS, None)
            convert()
        finally:
            os.environ.pop(_CATCH_ERRORS, None)


def installed():
    """Whether ONNX Runtime and the ONNX exporter can be imported."""
    return not missing("onnxruntime")


def _require():
    require_tensorflow_backend("onnxruntime", "exports the model")
    require("onnxruntime", "runtime='onnxruntime'")
    import onnxruntime

    return onnxruntime


def label():
    """The runtime as `describe()` names it, with ONNX Runtime's version."""
    return f"onnxruntime {_require().__version__}"


def native_bf16(flags):
    """ONNX Runtime's CPU provider computes in float32 only."""
    return False, "ONNX Runtime's CPU provider has no bf16 convolutions"


def compile(model, precision):  # noqa: A001 - one name across runtimes
    """A forward function for folded float32 `model` (float32 only).

    Args:
        model: A float32 functional `keras.Model` with one input.
        precision: `"float32"`.

    Returns:
        A function: batch (NumPy array) -> float32 NumPy outputs, nested like
        the model's. Its `threads` attribute is the CPUs ONNX Runtime uses.

    Raises:
        keras_xception.errors.ConfigError: For `precision="bfloat16"`.
    """
    import keras

    ort = _require()
    if precision != "float32":
        raise ConfigError(
            "runtime='onnxruntime' computes in float32 only; use "
            f"runtime='openvino' or 'keras' for bfloat16. Received: precision={precision!r}"
        )
    spec = keras.InputSpec(shape=tuple(model.inputs[0].shape),
                           dtype=model.inputs[0].dtype)
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "model.onnx")
        export_onnx(model, path, [spec])
        session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    structure = model.outputs if len(model.outputs) > 1 else model.outputs[0]

    def forward(x):
        outputs = session.run(None, {name: np.ascontiguousarray(x, dtype=np.float32)})
        return keras.tree.pack_sequence_as(
            structure, [np.asarray(o, dtype=np.float32) for o in outputs]
        )

    forward.threads = cpu.available_cores()
    return forward


def threads():
    """ONNX Runtime's default: one thread per available CPU."""
    return cpu.available_cores()
