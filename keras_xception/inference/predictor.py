"""The public wrapper: `optimize_for_inference(model, precision="auto")`.

It returns the folded float32 model (a plain functional `keras.Model`, see
`fold`) with two attributes set on that instance only:

- `predict`: for in-memory arrays, slices the batches itself and runs the
  chosen runtime's compiled function in the chosen precision (outputs always
  float32, shaped like the model's); any other input (datasets, generators,
  callbacks, `steps`, `verbose=1`) goes to Keras's own `Model.predict`, which
  runs the float32 model;
- `describe()`: what was chosen (runtime, precision, threads) and why.

The runtime and precision are chosen, and the runtime compiled, on the first
call of either (not by `optimize_for_inference` itself), so saving, exporting
or counting the FLOPs of the result costs no compilation. Calling the model
(`model(x)`) and saving it (`model.save(...)`) use the float32 model itself:
a reloaded copy is a plain Keras model; optimize it again for the fast path.

Keras's `Model.predict` builds a data pipeline (`tf.data` under
TensorFlow), a callback list and a progress bar on every call: about 60 ms
on a 2-core CPU, half the cost of a single 299x299 image; the fast
`predict` has none of them.
"""

from __future__ import annotations

import warnings

import numpy as np

from keras_xception.checks import positive_int
from keras_xception.errors import ConfigError
from keras_xception.inference import cpu, guard, inputs, int8_folder, quantize
from keras_xception.inference import onnxruntime as ort_runtime
from keras_xception.inference import openvino as ov_runtime
from keras_xception.inference import tensorflow as keras_runtime
from keras_xception.inference.fold import fold_batch_norm, with_dtype_policy
from keras_xception.inference.tensorflow import compile_forward

PRECISIONS = ("auto", "float32", "bfloat16", "int8")
RUNTIMES = {
    "keras": keras_runtime,
    "openvino": ov_runtime,
    "onnxruntime": ort_runtime,
}


def _is_batch_array(model, x):
    """Whether `x` is one in-memory batch array the fast path can slice."""
    if len(model.inputs) != 1:
        return False
    if isinstance(x, np.ndarray):
        return x.ndim == len(model.inputs[0].shape)
    import keras

    return keras.ops.is_tensor(x) and len(x.shape) == len(model.inputs[0].shape)


def attach_fast_predict(model, forward=None):
    """Replaces `model.predict`, on this instance only, with `fast_predict`.

    The replacement takes `Model.predict`'s arguments. For a NumPy array or
    a backend tensor (and `steps=None`, no `callbacks`, `verbose` of `0` or
    `"auto"`) it slices batches of `batch_size` (default 32) and runs the
    function from `forward` on each: no data pipeline, callbacks or
    progress bar. Anything else (a `tf.data.Dataset`, a generator or
    `PyDataset`, callbacks, `steps`, or `verbose=1` for a progress bar) is
    passed to Keras's `Model.predict` unchanged.

    For an array or tensor it keeps Keras's contract whatever the runtime
    (see `inputs`): an image holding a NaN or an infinity gets NaN in
    every one of its outputs, and the other images keep their own (not
    with `steps`, nor for datasets and generators, whose images it does not
    see). A `batch_size` that is not a positive integer, an empty batch
    (Keras's own `predict` fails on one with an `UnboundLocalError`) or
    images that do not have the model's input shape raise a one-line
    `keras_xception.errors.ConfigError` naming the value received.

    Args:
        model: A single-input `keras.Model`.
        forward: The function that computes one batch (NumPy in, float32
            NumPy out), or a callable returning it, marked by
            `forward.lazy = True`, called on the first fast call; by default
            `tensorflow.compile_forward(model)` in float32.

    Returns:
        `model`, with its `predict` replaced.
    """
    import keras

    keras_predict = type(model).predict.__get__(model)
    compiled = []  # compiled lazily, on the first fast call
    dtype = model.inputs[0].dtype

    def get_forward():
        if not compiled:
            if forward is None:
                compiled.append(compile_forward(model))
            elif getattr(forward, "lazy", False):
                compiled.append(forward())
            else:
                compiled.append(forward)
        return compiled[0]

    def predict(x, batch_size=None, verbose="auto", steps=None, callbacks=None):
        if batch_size is not None:
            batch_size = positive_int(batch_size, "batch_size")
        if not _is_batch_array(model, x):
            return keras_predict(
                x, batch_size=batch_size, verbose=verbose, steps=steps,
                callbacks=callbacks,
            )
        inputs.check_shape(model, x)
        if isinstance(x, np.ndarray):
            x = x.astype(dtype, copy=False)
        elif keras.backend.standardize_dtype(x.dtype) != dtype:
            x = keras.ops.cast(x, dtype)
        if steps is not None or callbacks or verbose not in (0, "auto"):
            outputs = keras_predict(x, batch_size=batch_size, verbose=verbose,
                                    steps=steps, callbacks=callbacks)
            if steps is not None:  # maybe fewer rows than images
                return outputs
            return inputs.mark_non_finite(outputs, inputs.finite_rows(x))
        if batch_size is None:
            batch_size = 32
        run = get_forward()
        outputs = []
        for start in range(0, int(x.shape[0]), batch_size):
            chunk = x[start:start + batch_size]
            outputs.append(inputs.mark_non_finite(run(chunk), inputs.finite_rows(chunk)))
        return keras.tree.map_structure(
            lambda *parts: np.concatenate(parts, axis=0), *outputs
        )

    predict.__doc__ = attach_fast_predict.__doc__
    model.predict = predict
    return model


def _all_float32(model):
    """Whether every layer of `model`, nested ones too, computes in float32."""
    import keras

    for layer in model.layers:
        if isinstance(layer, keras.Model) and not _all_float32(layer):
            return False
        if layer.dtype_policy.compute_dtype != "float32":
            return False
    return True


def choose_runtime(precision, *, backend, flags, installed):
    """The runtime `runtime="auto"` picks, and why.

    The rule follows the benchmark (README, "Precision and runtimes,
    measured"): OpenVINO when it is installed, for every precision. In
    bf16 it was the fastest path measured (1.1x TensorFlow's own at batch 8
    and 1.7x lower latency on one image, on Zen 4). In float32 its
    throughput was within 2% of ONNX Runtime's there, ready 3-5 times sooner
    and with half its peak memory; ONNX Runtime (14-22 s and about 8 GB to
    convert on every start) is used on request only. Without OpenVINO, the
    backend's own kernels.

    Args:
        precision: The precision asked for: `"auto"`, `"float32"` or
            `"bfloat16"`.
        backend: The Keras backend's name.
        flags: The CPU's flags as oneDNN may use them (`cpu.usable_flags()`).
        installed: `{runtime name: bool}` for `"openvino"` and
            `"onnxruntime"`.

    Returns:
        `(name, reason)`: a key of `RUNTIMES` and one sentence.
    """
    if backend != "tensorflow":
        return "keras", (f"OpenVINO and ONNX Runtime need the TensorFlow backend, "
                         f"this is {backend}")
    bf16 = precision == "bfloat16" or (precision == "auto" and cpu.bf16_flags(flags))
    if installed.get("openvino"):
        if bf16:
            return "openvino", "OpenVINO: the fastest bfloat16 runtime measured"
        return "openvino", ("OpenVINO is installed (in float32 as fast as ONNX "
                            "Runtime where measured, and ready 3-5 times sooner; "
                            "runtime='onnxruntime' on request)")
    return "keras", f"OpenVINO is not installed ({ov_runtime.EXTRA} for more speed)"


class _Choice:
    """Chooses the runtime and precision once, lazily, and compiles it."""

    def __init__(self, model, precision, runtime):
        self.model = model
        self.precision = precision
        self.runtime = runtime
        self.plan = None
        self.forward = None

    def _pick_runtime(self):
        import keras

        if self.runtime != "auto":
            return self.runtime, "requested"
        return choose_runtime(
            self.precision, backend=keras.backend.backend(), flags=cpu.usable_flags(),
            installed={name: r.installed() for name, r in RUNTIMES.items()
                       if name != "keras"},
        )

    def resolve(self):
        if self.plan is not None:
            return self
        name, runtime_reason = self._pick_runtime()
        runtime = RUNTIMES[name]
        reasons = [f"runtime: {runtime_reason}"]
        native, why = runtime.native_bf16(cpu.usable_flags())
        forward = None
        precision = self.precision
        if precision == "auto":
            if native:
                candidate = runtime.compile(self.model, "bfloat16")
                passed, cosine = guard.check(self.model, name, candidate)
                if passed:
                    forward, precision = candidate, "bfloat16"
                    reasons.append(
                        f"bfloat16: {why}; accuracy guard passed (minimum "
                        f"cosine to float32 {cosine:.5f} >= {guard.THRESHOLD})"
                    )
                else:
                    message = (
                        f"bfloat16 outputs differ from float32 on the probe batch "
                        f"(minimum cosine {cosine:.5f} < {guard.THRESHOLD}); "
                        "using float32"
                    )
                    warnings.warn(message, guard.AccuracyWarning, stacklevel=4)
                    reasons.append(f"float32: {message}")
            else:
                reasons.append(f"float32: {why}")
            if forward is None:
                precision = "float32"
        else:
            reasons.append(f"{precision}: requested")
            if precision == "bfloat16" and not native:
                reasons.append(f"emulated, likely slower than float32: {why}")
        if forward is None:
            forward = runtime.compile(self.model, precision)
        self.forward = forward
        self.plan = {
            "runtime": runtime.label(),
            "precision": precision,
            "requested_precision": self.precision,
            "threads": int(getattr(forward, "threads", 0) or runtime.threads()),
            "reason": "; ".join(reasons),
        }
        return self


def _check_arguments(precision, runtime, calibration=None):
    import keras

    if precision not in PRECISIONS:
        raise ConfigError(
            f"precision must be one of {', '.join(PRECISIONS)}. "
            f"Received: precision={precision!r}"
        )
    if precision == "int8" or calibration is not None:
        quantize.check_request(precision, runtime, calibration)
        return
    if runtime != "auto" and runtime not in RUNTIMES:
        raise ConfigError(
            f"runtime must be one of auto, {', '.join(RUNTIMES)}. "
            f"Received: runtime={runtime!r}"
        )
    if runtime in ("openvino", "onnxruntime"):
        RUNTIMES[runtime]._require()
        if runtime == "onnxruntime" and precision == "bfloat16":
            raise ConfigError(
                "runtime='onnxruntime' computes in float32 only; use "
                "runtime='openvino' or 'keras' for bfloat16. "
                f"Received: precision={precision!r}"
            )
    if runtime == "keras" and precision == "bfloat16" and keras.backend.backend() == "torch":
        raise ConfigError(
            "precision='bfloat16' is not supported on the torch backend; use "
            f"float32. Received: precision={precision!r}"
        )


def optimize_for_inference(model, precision="auto", *, runtime="auto", calibration=None,
                           held_out=None, thresholds=None, insist=False):
    """Returns a faster copy of `model` for inference on the CPU.

    Folds each BatchNormalization into the convolution before it (and each
    following ReLU into that convolution's activation; see `fold`), then
    gives the new model a `predict` that runs a compiled function of the
    chosen runtime in the chosen precision, and a `describe()`. The input
    model is not modified.

    Precision. `"float32"` computes what the model computes, up to float32
    rounding (softmax probabilities within 1e-4 with the ImageNet weights).
    `"bfloat16"` computes with bf16 values and float32 accumulation (minimum
    cosine of the ImageNet features to float32 above 0.998 on photos).
    `"auto"` picks bfloat16 only where the runtime computes it natively (a
    CPU with avx512_bf16 or amx_bf16; on TensorFlow also oneDNN on) and the
    accuracy guard holds (see `guard`: once per process, on a fixed probe
    batch; on failure an `AccuracyWarning` and float32), else float32. Outputs
    are float32 in every case.

    Runtime. `"auto"` picks OpenVINO when it is installed (the `openvino`
    extra) under the TensorFlow backend, else `"keras"` (the backend's own
    compiled function); see `choose_runtime` for the measurements behind
    it. `"onnxruntime"` (float32 only) is available on request. The choice
    is made, and compiled, on the first `predict` or `describe()` call: on
    2 CPUs about 2 s for `"keras"`, 4-5 s for OpenVINO and 14-22 s for ONNX
    Runtime (its conversion through tf2onnx).

    Inputs. On every runtime, `predict` of an array keeps the contract of
    Keras's `predict` for the float32 model: an image holding a NaN or an
    infinity gets NaN in every one of its outputs, and the other images of
    the batch get their own answers. The runtimes' kernels do not keep NaN
    by themselves (see `inputs`), so `predict` checks each batch with
    `np.isfinite` (about 0.01% of the model's time) and sets the outputs of
    the non-finite images to NaN. An empty batch, a `batch_size` that is not
    a positive integer and images of another shape than the model's input
    are each a one-line `ConfigError`.

    The result is a plain functional `keras.Model` of standard layers:
    `model(x)` runs its float32 layers, and it can be saved with
    `model.save(...)` and reloaded without `custom_objects`. A reloaded copy
    predicts with Keras's own `predict`; pass it through
    `optimize_for_inference` again for the fast one.

    Args:
        model: A functional `keras.Model`, e.g. from `keras_xception.Xception`
            or `keras.applications.Xception`, with any `include_top` and
            `pooling`, or a classifier with such a model nested inside.
        precision: `"auto"` (default), `"float32"`, `"bfloat16"` or
            `"int8"` (OpenVINO with NNCF, the `int8` extra; needs
            `calibration`; see `quantize`). `"auto"` never picks int8.
        runtime: `"auto"` (default), `"keras"`, `"openvino"` or
            `"onnxruntime"`.
        calibration: For int8: an array of images prepared as the model
            takes them, a folder, or a list of image files.
        held_out: For int8: images the agreement report is measured on
            (default: every fourth calibration image, not calibrated on).
        thresholds: For int8: overrides of `quantize.THRESHOLDS`
            (`{"top1_agreement": 0.97, "mean_cosine": 0.99}`); below them
            the call warns (`AccuracyWarning`) and returns float32.
        insist: For int8: keep int8 even below the thresholds.

    Returns:
        A new `keras.Model` with a fast `predict(x, batch_size=None,
        verbose="auto", ...)` and a `describe()` returning a dict:
        `runtime`, `precision`, `requested_precision`, `threads`, `reason`,
        and for int8 `int8`: the agreement report.

    Raises:
        keras_xception.errors.ConfigError: If `model` is not a functional
            Keras model, `precision` or `runtime` is not one of the above,
            the runtime is not installed or needs the TensorFlow backend, or
            ONNX Runtime is asked for bfloat16; from the returned model's
            `predict`, if the batch is empty or of another image shape than
            the model's input, or `batch_size` is not a positive integer.
    """
    if isinstance(model, int8_folder.Int8Model):
        return int8_folder.already_int8(model, precision, calibration)
    _check_arguments(precision, runtime, calibration)
    folded = fold_batch_norm(model)
    if not _all_float32(folded):
        # A model built under a mixed policy: every runtime starts from
        # float32, and the precision is this function's to choose.
        folded = with_dtype_policy(folded, "float32")
    if precision == "int8":
        return quantize.attach_int8(folded, calibration, held_out=held_out,
                                    thresholds=thresholds, insist=insist)
    choice = _Choice(folded, precision, runtime)

    def forward():
        return choice.resolve().forward

    forward.lazy = True
    attach_fast_predict(folded, forward=forward)

    def describe():
        """What `predict` runs: runtime, precision, threads and why (a dict)."""
        return dict(choice.resolve().plan)

    folded.describe = describe
    return folded
