"""`optimize_for_inference(model, precision=...)`: the choice and its guard.

The rule for `precision="auto"` is tested with injected CPU flags and
oneDNN state, so it holds on every machine; the bf16 runtimes themselves
run wherever they are installed (bf16 is emulated on CPUs without it:
slower, same numbers within bf16 rounding).
"""

import warnings

import keras
import numpy as np
import pytest

from keras_xception import Xception, optimize_for_inference
from keras_xception.architecture import weight_layout
from keras_xception.errors import ConfigError
from keras_xception.inference import AccuracyWarning, cpu, guard
from keras_xception.inference import tensorflow as keras_runtime
from keras_xception.inference import openvino as ov_runtime
from keras_xception.preprocessing import load_image, preprocess_input

ZEN4 = frozenset({"avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16"})
AVX2 = frozenset({"avx", "avx2", "fma", "f16c"})
SIZE = 71


def cosines(a, b):
    a, b = a.reshape(len(a), -1), b.reshape(len(b), -1)
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


@pytest.fixture(scope="module")
def small():
    return Xception(weights=None, include_top=False, pooling="avg",
                    input_shape=(SIZE, SIZE, 3))


@pytest.fixture(scope="module")
def batch():
    return np.random.default_rng(5).uniform(-1, 1, (3, SIZE, SIZE, 3)).astype("float32")


@pytest.fixture
def native(monkeypatch):
    """A CPU with native bf16 and TensorFlow's oneDNN on, and a fresh guard."""
    monkeypatch.setattr(cpu, "cpu_flags", lambda: ZEN4)
    monkeypatch.setattr(keras_runtime, "onednn_enabled", lambda: True)
    monkeypatch.setattr(guard, "_results", {})


def test_cpu_flags_are_read_from_cpuinfo(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu avx2 AVX512_BF16 fma\n\n"
                    "processor\t: 1\nflags\t\t: fpu\n")
    assert cpu.cpu_flags(str(info)) == {"fpu", "avx2", "avx512_bf16", "fma"}
    assert cpu.cpu_flags(str(tmp_path / "missing")) == frozenset()
    assert cpu.bf16_flags({"avx2", "amx_bf16", "avx512_bf16"}) == ["amx_bf16", "avx512_bf16"]


@pytest.mark.parametrize("flags, onednn, expected", [
    (ZEN4, True, True),
    (ZEN4, False, False),   # TensorFlow's own bf16 kernels are emulated
    (AVX2, True, False),    # no native bf16 in the CPU
    (frozenset(), True, False),
    (AVX2 | {"amx_bf16"}, True, True),
])
def test_tensorflow_native_bf16_rule(monkeypatch, flags, onednn, expected):
    monkeypatch.setattr(keras_runtime, "onednn_enabled", lambda: onednn)
    native, reason = keras_runtime.native_bf16(flags)
    assert native is expected
    assert ("oneDNN" in reason) if flags & cpu.BF16_FLAGS else ("no native bf16" in reason)


def test_openvino_native_bf16_rule():
    assert ov_runtime.native_bf16(ZEN4)[0] is True
    assert ov_runtime.native_bf16(AVX2) == (
        False, "the CPU has no native bf16 (avx512_bf16 or amx_bf16)")


BOTH = {"openvino": True, "onnxruntime": True}


@pytest.mark.parametrize("precision, flags, installed, expected", [
    # OpenVINO whenever it is installed: bf16 where native, float32 elsewhere.
    ("auto", ZEN4, BOTH, "openvino"),
    ("float32", ZEN4, BOTH, "openvino"),
    ("auto", AVX2, BOTH, "openvino"),
    ("bfloat16", AVX2, {"openvino": True}, "openvino"),
    # ONNX Runtime only on request: 14-22 s and 8 GB to convert on each start.
    ("float32", AVX2, {"onnxruntime": True}, "keras"),
    ("auto", ZEN4, {"onnxruntime": True}, "keras"),
    ("auto", AVX2, {}, "keras"),
])
def test_auto_runtime_rule(precision, flags, installed, expected):
    from keras_xception.inference.predictor import choose_runtime

    name, reason = choose_runtime(precision, backend="tensorflow", flags=flags,
                                  installed=installed)
    assert name == expected, reason
    if expected == "keras":
        assert "not installed" in reason and "keras-xception[openvino]" in reason


def test_auto_runtime_is_keras_under_another_backend():
    from keras_xception.inference.predictor import choose_runtime

    name, reason = choose_runtime("auto", backend="jax", flags=ZEN4, installed=BOTH)
    assert name == "keras" and "jax" in reason


@pytest.mark.slow
def test_auto_picks_the_runtime_by_the_rule(monkeypatch, small, batch):
    """describe() names what the rule chose, and predict runs it."""
    from keras_xception.inference import onnxruntime as ort_runtime

    monkeypatch.setattr(cpu, "cpu_flags", lambda: AVX2)
    monkeypatch.setattr(ov_runtime, "installed", lambda: False)
    monkeypatch.setattr(ort_runtime, "installed", lambda: True)
    fast = optimize_for_inference(small)
    plan = fast.describe()
    assert plan["runtime"].startswith("keras/") and plan["precision"] == "float32"
    assert "keras-xception[openvino]" in plan["reason"]
    expected = small.predict(batch, verbose=0)
    np.testing.assert_allclose(fast.predict(batch), expected, rtol=1e-4,
                               atol=1e-4 * np.abs(expected).max())


def test_auto_stays_float32_without_native_bf16(monkeypatch, small, batch):
    monkeypatch.setattr(cpu, "cpu_flags", lambda: AVX2)
    fast = optimize_for_inference(small, runtime="keras")
    plan = fast.describe()
    assert plan["precision"] == "float32" and plan["requested_precision"] == "auto"
    assert "no native bf16" in plan["reason"]
    assert plan["threads"] >= 1 and plan["runtime"].startswith("keras/")
    expected = small.predict(batch, verbose=0)
    np.testing.assert_allclose(fast.predict(batch), expected, rtol=1e-4,
                               atol=1e-4 * np.abs(expected).max())


@pytest.mark.slow
def test_auto_picks_bf16_where_native_once_the_guard_passes(native, monkeypatch,
                                                            small, batch):
    calls = []
    real_min_cosine = guard.min_cosine
    monkeypatch.setattr(guard, "min_cosine",
                        lambda a, b: calls.append(1) or real_min_cosine(a, b))
    fast = optimize_for_inference(small, runtime="keras")
    with warnings.catch_warnings():
        warnings.simplefilter("error", AccuracyWarning)
        got = fast.predict(batch, batch_size=2)
    plan = fast.describe()
    assert plan["precision"] == "bfloat16", plan
    assert "accuracy guard passed" in plan["reason"]
    assert got.dtype == np.float32 and got.shape == (3, 2048)
    expected = small.predict(batch, verbose=0)
    assert cosines(got, expected).min() >= guard.THRESHOLD
    # bf16 really ran: the outputs are not float32's to float32 rounding.
    assert np.abs(got - expected).max() > 1e-4 * np.abs(expected).max()
    # The guard ran once; a second wrapper of the same model reuses it.
    again = optimize_for_inference(small, runtime="keras")
    assert again.describe()["precision"] == "bfloat16"
    assert len(calls) == 1


@pytest.mark.slow
def test_auto_falls_back_to_float32_with_a_warning(native, monkeypatch, small, batch):
    # A probe whose bf16 outputs miss the threshold: every cosine is below 1.5.
    monkeypatch.setattr(guard, "THRESHOLD", 1.5)
    fast = optimize_for_inference(small, runtime="keras")
    with pytest.warns(AccuracyWarning, match="minimum cosine .* < 1.5.*using float32"):
        got = fast.predict(batch)
    plan = fast.describe()
    assert plan["precision"] == "float32" and "using float32" in plan["reason"]
    expected = small.predict(batch, verbose=0)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


def test_guard_probe_is_fixed_and_in_range():
    a, b = guard.probe_batch((None, 96, 3)), guard.probe_batch((None, 96, 3))
    assert a.shape == (guard.PROBE_IMAGES, 299, 96, 3) and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    assert a.min() >= -1 and a.max() <= 1 and a.std() > 0.3
    assert guard.min_cosine(a, a) == pytest.approx(1.0)
    assert guard.min_cosine(a, -a) == pytest.approx(-1.0)


@pytest.mark.parametrize("kwargs, match", [
    ({"precision": "half"}, "Received: precision='half'"),
    ({"runtime": "tvm"}, "Received: runtime='tvm'"),
])
def test_bad_arguments_name_the_value(small, kwargs, match):
    with pytest.raises(ConfigError, match=match):
        optimize_for_inference(small, **kwargs)


def test_missing_openvino_names_the_extra(monkeypatch, small):
    import sys

    monkeypatch.setitem(sys.modules, "openvino", None)  # import fails
    with pytest.raises(ConfigError, match=r"keras-xception\[openvino\]"):
        optimize_for_inference(small, runtime="openvino")


def test_onnxruntime_refuses_bfloat16(small):
    import onnxruntime  # noqa: F401  (the test extra installs it)
    with pytest.raises(ConfigError, match="float32 only.*Received: precision='bfloat16'"):
        optimize_for_inference(small, "bfloat16", runtime="onnxruntime")


def available_runtimes():
    runtimes = ["keras"]
    if ov_runtime.installed():
        runtimes.append("openvino")
    return runtimes


# ------------------------------------------ accuracy on the genuine weights


@pytest.fixture(scope="module")
def kitchen_batch(kitchen_photos):
    """The 18 photos at 299x299, preprocessed."""
    return np.stack([preprocess_input(load_image(p)) for p in kitchen_photos])


@pytest.fixture(scope="module")
def imagenet_features(imagenet_notop_arrays):
    model = Xception(weights=None, include_top=False, pooling="avg",
                     input_shape=(299, 299, 3))
    for entry, values in zip(weight_layout(False), imagenet_notop_arrays):
        model.get_layer(entry.name).set_weights(values)
    return model


@pytest.fixture(scope="module")
def float32_answers(imagenet_features, kitchen_batch, kitchen_photos, kitchen_model):
    """Keras's float32 features of the 18 photos, and the kitchen classifier's
    inputs (at its 150x150) and float32 scores: one reference for every runtime."""
    features = imagenet_features.predict(kitchen_batch, batch_size=6, verbose=0)
    size = tuple(kitchen_model.inputs[0].shape[1:3])
    photos = np.stack([preprocess_input(load_image(p, target_size=size))
                       for p in kitchen_photos])
    return features, photos, kitchen_model.predict(photos, batch_size=6, verbose=0)


@pytest.mark.slow
@pytest.mark.numerics
@pytest.mark.parametrize("runtime", available_runtimes())
def test_bf16_features_and_kitchen_head_stay_close(runtime, imagenet_features,
                                                   kitchen_batch, kitchen_model,
                                                   float32_answers):
    """bf16 vs float32 on 18 photos: features cos >= 0.998, head agrees 18/18."""
    expected, photos, head = float32_answers
    got = optimize_for_inference(imagenet_features, "bfloat16",
                                 runtime=runtime).predict(kitchen_batch, batch_size=6)
    assert got.shape == (18, 2048) and got.dtype == np.float32
    assert cosines(got, expected).min() >= guard.THRESHOLD
    # The fine-tuned classifier: Xception nested in it, a small head after.
    kitchen = kitchen_model
    weights = [w.copy() for w in kitchen.get_weights()]
    fast = optimize_for_inference(kitchen, "bfloat16", runtime=runtime)
    got = fast.predict(photos, batch_size=6)
    assert got.shape == head.shape and got.dtype == np.float32
    np.testing.assert_array_equal(got.argmax(-1), head.argmax(-1))
    # Folding worked on a copy: the classifier is unchanged.
    assert all(np.array_equal(a, b) for a, b in zip(weights, kitchen.get_weights()))
    assert any(isinstance(l, keras.layers.BatchNormalization)
               for l in kitchen.get_layer("xception").layers)


@pytest.mark.slow
def test_a_model_built_under_a_mixed_policy_runs_on_every_runtime(batch):
    """Every runtime starts from float32, whatever policy the model was built in."""
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        mixed = Xception(weights=None, include_top=False, pooling="avg",
                         input_shape=(SIZE, SIZE, 3))
    finally:
        keras.config.set_dtype_policy("float32")
    reference = optimize_for_inference(mixed, "float32", runtime="keras")
    assert reference.layers[-1].dtype_policy.compute_dtype == "float32"
    expected = reference.predict(batch)
    runtimes = available_runtimes()
    assert "openvino" in runtimes  # the test extra installs it
    for runtime in runtimes:
        got = optimize_for_inference(mixed, "float32", runtime=runtime).predict(batch)
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, expected, rtol=1e-4,
                                   atol=1e-4 * np.abs(expected).max())


def test_openvino_conversion_sends_no_usage_statistics(monkeypatch, small):
    """Nothing leaves the machine: OpenVINO's telemetry is not called."""
    import openvino_telemetry
    from openvino.tools.ovc import convert_impl

    calls = []
    for name in ("send_event", "start_session", "end_session", "send_error"):
        monkeypatch.setattr(openvino_telemetry.Telemetry, name,
                            lambda self, *a, name=name, **k: calls.append(name))
    before = convert_impl.tm
    ov_runtime.convert(small)
    assert calls == []
    assert convert_impl.tm is before  # OpenVINO's own module, back in place


@pytest.mark.parametrize("variable, isa", [
    ("ONEDNN_MAX_CPU_ISA", "avx2"), ("DNNL_MAX_CPU_ISA", "AVX512_CORE_VNNI")])
def test_a_onednn_isa_cap_below_bf16_keeps_auto_in_float32(native, monkeypatch, small,
                                                             variable, isa):
    """The CPU has bf16, but oneDNN's kernels are capped below it."""
    for name in cpu.ISA_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(variable, isa)
    assert not cpu.usable_flags() & cpu.BF16_FLAGS
    plan = optimize_for_inference(small, runtime="keras").describe()
    assert plan["precision"] == "float32"
    assert f"{variable}={isa.upper()} caps oneDNN's kernels below bf16" in plan["reason"]
    # A cap at or above bf16 changes nothing.
    monkeypatch.setenv(variable, "AVX512_CORE_AMX")
    assert cpu.usable_flags() == ZEN4


def test_openvino_bf16_under_an_avx2_cap_is_one_line_before_compiling(monkeypatch, small):
    for name in cpu.ISA_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    monkeypatch.setattr(ov_runtime, "convert", None)  # converting would fail
    with pytest.raises(ConfigError, match=r"^OpenVINO cannot compile a bfloat16 model "
                       r"while ONEDNN_MAX_CPU_ISA=AVX2 caps oneDNN below bf16: .*'float32'"):
        optimize_for_inference(small, "bfloat16", runtime="openvino").predict(
            np.zeros((1, SIZE, SIZE, 3), "float32"))


@pytest.mark.slow
def test_auto_runs_in_a_process_whose_onednn_is_capped_at_avx2(small, batch, tmp_path):
    """A real process: oneDNN reads the cap when it starts (OpenVINO's and
    TensorFlow's). Before the cap was read, OpenVINO was asked for bf16 on
    this CPU's flags and failed to compile."""
    import os
    import subprocess
    import sys

    model, x = tmp_path / "small.keras", tmp_path / "x.npy"
    small.save(model)
    np.save(x, batch)
    code = (
        "from keras_xception import tfenv\n"
        "tfenv.install()\n"  # Keras starts as in the command line: quicker.
        "import sys, numpy as np, keras\n"
        "from keras_xception import optimize_for_inference\n"
        "fast = optimize_for_inference(keras.saving.load_model(sys.argv[1]))\n"
        "print(fast.describe()['precision'])\n"
        "np.save(sys.argv[3], fast.predict(np.load(sys.argv[2])))\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in cpu.ISA_VARIABLES}
    done = subprocess.run([sys.executable, "-c", code, model, x, tmp_path / "y.npy"],
                          env={**env, "ONEDNN_MAX_CPU_ISA": "AVX2"},
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == ["float32"]
    expected = small.predict(batch, verbose=0)
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), expected, rtol=1e-4,
                               atol=1e-4 * np.abs(expected).max())
