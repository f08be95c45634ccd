"""`keras-xception export`: the exported model matches the Keras model.

ONNX and LiteRT need the `export` extra, OpenVINO the `openvino` extra; the
`test` extra includes both.
"""

import os
import warnings

import numpy as np
import pytest

from keras_xception import Xception
from keras_xception.export import export
from keras_xception.inference import optimize_for_inference
from keras_xception.preprocessing import load_image, preprocess_input
from tests import commandline


@pytest.fixture(scope="module")
def photos(kitchen_photos):
    return np.stack([preprocess_input(load_image(p)) for p in kitchen_photos[4:6]])


@pytest.fixture(scope="module")
def features(imagenet_notop_files):
    """The real no-top model (4D features) and its outputs are the reference."""
    return Xception(weights=str(imagenet_notop_files["keras3"]), include_top=False)


@pytest.mark.slow
@pytest.mark.numerics
def test_saved_model_from_the_command_line(imagenet_notop_files, features, photos,
                                           computed_once):
    import tensorflow as tf

    def export_once(out):  # The oneDNN rerun loads the same export.
        done = commandline.main("export", imagenet_notop_files["keras3"], out,
                                "--format", "saved_model")
        assert done.returncode == 0, done.stderr

    out = computed_once("xception_savedmodel", export_once)
    loaded = tf.saved_model.load(str(out))
    got = loaded.serve(tf.constant(photos)).numpy()
    expected = features.predict(photos, verbose=0)
    assert got.shape == expected.shape == (2, 10, 10, 2048)
    np.testing.assert_allclose(got, expected, atol=1e-4 * np.abs(expected).max())
    assert "serving_default" in loaded.signatures


def test_existing_output_is_not_overwritten(features, tmp_path):
    from keras_xception.errors import ConfigError

    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "file").write_text("x")
    with pytest.raises(ConfigError, match="exists"):
        export(features, tmp_path / "taken", "saved_model")
    with pytest.raises(ConfigError, match=".onnx"):
        export(features, tmp_path / "model.bin", "onnx")


def test_failed_export_leaves_nothing_behind(features, tmp_path, monkeypatch):
    def export_half(self, filepath, **kwargs):
        import pathlib

        pathlib.Path(filepath).mkdir()
        (pathlib.Path(filepath) / "saved_model.pb").write_bytes(b"half")
        raise RuntimeError("disk full")

    monkeypatch.setattr(type(features), "export", export_half)
    with pytest.raises(RuntimeError, match="disk full"):
        export(features, tmp_path / "out" / "model", "saved_model")
    assert list((tmp_path / "out").iterdir()) == []


def test_bad_output_fails_before_the_weights_are_fetched(tmp_path, keras_home):
    # Offline with an empty cache: reaching the weights would be an error too,
    # but the output path is checked first, without importing TensorFlow.
    done = commandline.main("export", "imagenet", tmp_path / "model.bin",
                            "--format", "onnx")
    assert done.returncode == 1
    assert done.stderr == (
        f"error: The onnx output must be a file ending in '.onnx'. "
        f"Received: {tmp_path / 'model.bin'}\n"
    )
    done = commandline.main("export", tmp_path / "missing.h5", tmp_path / "out")
    assert done.returncode == 1
    assert done.stderr.startswith("error: Weights file not found: ")
    assert done.stderr.count("\n") == 1 and not (tmp_path / "out").exists()


def test_imagenet_offline_without_cached_weights_says_what_to_do(tmp_path, keras_home):
    # A real process: the message must come before TensorFlow starts logging.
    done = commandline.run("export", "imagenet", tmp_path / "out")
    assert done.returncode == 1
    # One line, the weights module's (where the file goes), before TensorFlow.
    assert done.stderr.startswith("error: ") and done.stderr.count("\n") == 1
    assert str(keras_home) in done.stderr and not (tmp_path / "out").exists()


def test_the_onnx_exporters_numpy_warning_is_not_shown(monkeypatch):
    # Keras's tf2onnx patch asks `hasattr(np, "object")` once per process
    # (so an export in a test cannot be relied on to show it), and NumPy
    # answers with a FutureWarning about itself; then it sets `np.object`,
    # which an earlier export in this process may have done: undone here.
    from keras_xception.inference.onnxruntime import tf2onnx_unwarned

    monkeypatch.delattr(np, "object", raising=False)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        hasattr(np, "object")
        shown = len(seen)
        with tf2onnx_unwarned():
            hasattr(np, "object")
    if not shown:
        pytest.skip("this NumPy does not warn about np.object")
    assert len(seen) == shown and "np.object" in str(seen[0].message)


@pytest.mark.slow
@pytest.mark.numerics
def test_onnx_matches(features, photos, computed_once):
    import onnxruntime

    # Exported once per run: the oneDNN rerun runs the same file.
    path = computed_once("xception_notop.onnx", lambda path: export(
        optimize_for_inference(features), path, "onnx"))
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    got = session.run(None, {name: photos})[0]
    expected = features.predict(photos, verbose=0)
    np.testing.assert_allclose(got, expected, atol=1e-4 * np.abs(expected).max())


def test_an_onnx_optimizer_that_fails_is_skipped_as_tf2onnx_does(monkeypatch, tmp_path):
    """The export skips tf2onnx's copy of the graph before each optimizer;
    when an optimizer raises, it converts again with the copies, and that
    optimizer is skipped, as tf2onnx alone would do."""
    import keras
    import onnxruntime
    from tf2onnx.optimizer.transpose_optimizer import TransposeOptimizer

    from keras_xception.inference.onnxruntime import export_onnx

    calls = []

    def failing(self, graph, iteration):
        calls.append(os.environ.get("TF2ONNX_CATCH_ERRORS"))
        raise RuntimeError("an optimizer fails")

    monkeypatch.setattr(TransposeOptimizer, "optimize", failing)
    monkeypatch.delenv("TF2ONNX_CATCH_ERRORS", raising=False)
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(3)(inputs))
    x = np.random.default_rng(0).uniform(-1, 1, (2, 4)).astype("float32")
    path = tmp_path / "dense.onnx"
    export_onnx(model, path, [keras.InputSpec(shape=(None, 4), dtype="float32")])
    assert calls[0] == "FALSE" and calls[-1] is None  # fast, then careful
    assert "TF2ONNX_CATCH_ERRORS" not in os.environ
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x})[0]
    np.testing.assert_allclose(got, model.predict(x, verbose=0), rtol=1e-6, atol=1e-6)


@pytest.mark.slow
@pytest.mark.numerics
def test_litert_matches(imagenet_notop_arrays, photos, computed_once):
    from ai_edge_litert.interpreter import Interpreter

    from keras_xception.architecture import weight_layout

    # LiteRT wants a static input size: build the model at 299x299.
    model = Xception(weights=None, include_top=False, input_shape=(299, 299, 3),
                     pooling="avg")
    for entry, values in zip(weight_layout(False), imagenet_notop_arrays):
        model.get_layer(entry.name).set_weights(values)
    # Exported once per run: the oneDNN rerun runs the same file.
    path = computed_once("xception_notop.tflite", lambda path: export(
        optimize_for_inference(model), path, "litert"))
    interpreter = Interpreter(model_path=str(path))
    expected = model.predict(photos, verbose=0)
    got = []
    for image in photos:
        interpreter.resize_tensor_input(0, (1, 299, 299, 3))
        interpreter.allocate_tensors()
        interpreter.set_tensor(interpreter.get_input_details()[0]["index"], image[None])
        interpreter.invoke()
        got.append(interpreter.get_tensor(interpreter.get_output_details()[0]["index"])[0])
    np.testing.assert_allclose(np.stack(got), expected, atol=1e-4 * np.abs(expected).max())


@pytest.mark.slow
@pytest.mark.numerics
def test_openvino_matches(features, photos, tmp_path):
    import openvino as ov

    out = export(optimize_for_inference(features), tmp_path / "ir", "openvino")
    assert sorted(p.name for p in out.iterdir()) == ["model.bin", "model.xml"]
    expected = features.predict(photos, verbose=0)
    core = ov.Core()
    model = core.read_model(out / "model.xml")
    f32 = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    got = f32(photos)[0]
    assert got.shape == expected.shape == (2, 10, 10, 2048)
    np.testing.assert_allclose(got, expected, atol=1e-4 * np.abs(expected).max())
    # OpenVINO's default (bf16 where the CPU has it) stays close to float32.
    default = np.asarray(core.compile_model(model, "CPU")(photos)[0], np.float64)
    a, b = default.reshape(2, -1), expected.reshape(2, -1).astype(np.float64)
    assert ((a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)).min() >= 0.998


def test_openvino_from_the_command_line_refuses_an_existing_file(tmp_path):
    out = tmp_path / "ir"
    out.write_text("")
    done = commandline.main("export", "imagenet", out, "--format", "openvino")
    assert done.returncode == 1 and done.stderr.count("\n") == 1
    assert "exists already" in done.stderr and out.read_text() == ""
