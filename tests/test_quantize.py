"""int8 inference: calibration, the agreement report, the cache, the command line.

The kitchenware classifier (genuine ImageNet base, 150x150) is quantized
once per session, on 6 of the 18 kitchenware photos; the report and the
checks below use 9 others, held out. The Keras cache of the session is a
temporary folder, so every later quantization of the same model and images
in the session (the threshold fallback, the command line) is a cache hit.
"""

import json
import os
import pathlib
import shutil
import warnings

import numpy as np
import pytest

from keras_xception.errors import ConfigError
from keras_xception.inference import AccuracyWarning, optimize_for_inference, quantize
from keras_xception.preprocessing import preprocess_input
from tests import realweights


@pytest.fixture(scope="module")
def int8_home(tmp_path_factory):
    """A Keras cache for this module's quantized models, set for this module's
    tests only (the variables go back after its last test)."""
    home = tmp_path_factory.mktemp("int8_keras_home")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("KERAS_HOME", str(home))
        patch.setenv("KERAS_XCEPTION_OFFLINE", "1")
        yield home


@pytest.fixture(scope="session")
def photo_sets(kitchen_photos, tmp_path_factory):
    """(calibration folder of 6 photos, held-out folder of 9 others)."""
    root = tmp_path_factory.mktemp("int8_photos")
    calibration, held_out = root / "calibration", root / "held_out"
    calibration.mkdir()
    held_out.mkdir()
    for path in kitchen_photos[0::2][:6]:
        shutil.copy(path, calibration)
    for path in kitchen_photos[1::2]:
        shutil.copy(path, held_out)
    return calibration, held_out


@pytest.fixture(scope="module")
def int8_kitchen(int8_home, kitchen_model, photo_sets):
    """The kitchenware classifier in int8, quantized once for this module."""
    calibration, held_out = photo_sets
    before = quantize.quantized_count
    model = optimize_for_inference(kitchen_model, "int8", calibration=calibration,
                                   held_out=held_out)
    assert quantize.quantized_count == before + 1
    return model


def _held_out_pixels(photo_sets):
    files = sorted(photo_sets[1].iterdir())
    return files, realweights.pillow_pixels(files, 150)


def _keras(model, x):
    """`model`'s float32 outputs for `x`, in the input structure it was saved with."""
    import keras

    return np.asarray(model(keras.tree.pack_sequence_as(model.input, [x]), training=False))


def _cosines(a, b):
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


@pytest.mark.slow
def test_int8_agrees_with_float32_keras_on_held_out_photos(int8_kitchen, kitchen_model,
                                                           photo_sets):
    _, pixels = _held_out_pixels(photo_sets)
    x = preprocess_input(pixels)
    reference = _keras(kitchen_model, x)  # Keras, float32
    got = int8_kitchen.predict(x, verbose=0)
    assert int8_kitchen.describe()["precision"] == "int8"
    cosines = _cosines(reference, got)
    assert cosines.mean() >= 0.99 and cosines.min() >= 0.97, cosines
    np.testing.assert_array_equal(got.argmax(1), reference.argmax(1))


@pytest.mark.slow
def test_an_images_int8_output_does_not_depend_on_the_batch(int8_kitchen, photo_sets):
    """A batch runs split across OpenVINO's streams, one photo on all the
    cores: each photo gets the same outputs either way, at any batch size."""
    assert int8_kitchen.describe()["precision"] == "int8"
    _, pixels = _held_out_pixels(photo_sets)
    x = preprocess_input(pixels)
    whole = int8_kitchen.predict(x, batch_size=len(x), verbose=0)
    # Kernels may sum in another order for another part size or thread
    # count (bit-equal on the Zen 4 where this was written): 1e-4 of logits
    # of about 5, the tolerance of the int8 tests below.
    for batch_size in (1, 2, 4):
        np.testing.assert_allclose(int8_kitchen.predict(x, batch_size=batch_size, verbose=0),
                                   whole, rtol=1e-4, atol=1e-4)
    # Another order of the same photos: each row follows its photo.
    order = np.arange(len(x))[::-1]
    np.testing.assert_allclose(int8_kitchen.predict(x[order], batch_size=len(x), verbose=0),
                               whole[order], rtol=1e-4, atol=1e-4)


def test_a_batch_split_across_streams_fails_whole_and_the_next_one_runs():
    """The stream runner on a one-layer OpenVINO model (ReLU): its parts are
    joined in order, a failing batch raises (no rows of it returned), and the
    requests serve the next batch as if nothing happened."""
    import openvino as ov

    x = ov.opset13.parameter([-1, 4], np.float32)
    forward = quantize._streamed(ov.Model([ov.opset13.relu(x)], [x]), "f32")
    batch = np.arange(-14, 14, dtype=np.float32).reshape(7, 4)
    for rows in (7, 3, 2, 1):
        np.testing.assert_array_equal(forward(batch[:rows]), np.maximum(batch[:rows], 0))
    for _ in range(2):
        with pytest.raises(RuntimeError):
            forward(np.zeros((5, 3), np.float32))  # Not the model's 4 columns.
        np.testing.assert_array_equal(forward(batch), np.maximum(batch, 0))


@pytest.mark.slow
def test_report_describes_held_out_agreement_and_speed(int8_kitchen):
    report = int8_kitchen.describe()["int8"]
    assert report["calibration"]["images"] == 6
    assert report["calibration"]["held_out"] == 9
    agreement = report["agreement"]
    assert 0.99 <= agreement["mean_cosine"] <= 1
    assert agreement["min_cosine"] <= agreement["mean_cosine"]
    assert agreement["top1_agreement"] == 1.0  # 6 classes: a classifier
    assert 0 < agreement["top5_overlap"] <= 1
    speed = report["speed"]
    assert speed["int8_img_per_s"] > 0 and speed["float32_img_per_s"] > 0
    assert speed["speedup"] == pytest.approx(
        speed["int8_img_per_s"] / speed["float32_img_per_s"])
    assert report["thresholds"] == quantize.THRESHOLDS and report["passed"] is True
    assert set(report["versions"]) == {"nncf", "openvino"}
    # The precision the float parts ran in, for this CPU (a cache key too).
    assert report["settings"]["inference_precision_hint"] == quantize.float_hint()
    # The JSON file beside the cached model holds the same measurements.
    saved = json.loads((pathlib.Path(report["path"]) / "report.json").read_text())
    assert saved["agreement"] == agreement and saved["speed"] == speed


@pytest.mark.slow
def test_second_call_is_a_cache_hit_and_below_threshold_falls_back(
        int8_kitchen, kitchen_model, photo_sets):
    calibration, held_out = photo_sets
    folder = pathlib.Path(int8_kitchen.describe()["int8"]["path"])
    stamp = (folder / "model.bin").stat().st_mtime_ns
    count = quantize.quantized_count
    with pytest.warns(AccuracyWarning, match=r"mean cosine 0\.9\d+ < 1\.01"):
        fallback = optimize_for_inference(kitchen_model, "int8", calibration=calibration,
                                          held_out=held_out,
                                          thresholds={"mean_cosine": 1.01})
    assert quantize.quantized_count == count  # No calibration: read from the cache.
    assert (folder / "model.bin").stat().st_mtime_ns == stamp
    plan = fallback.describe()
    assert plan["int8"]["cache"] == "hit" and plan["int8"]["passed"] is False
    assert plan["precision"] == "float32" and plan["requested_precision"] == "int8"
    _, pixels = _held_out_pixels(photo_sets)
    x = preprocess_input(pixels)
    np.testing.assert_allclose(fallback.predict(x), _keras(kitchen_model, x),
                               rtol=1e-4, atol=1e-4)
    # Insisting keeps int8, from the same cache entry.
    with warnings.catch_warnings():
        warnings.simplefilter("error", AccuracyWarning)
        kept = optimize_for_inference(kitchen_model, "int8", calibration=calibration,
                                      held_out=held_out, insist=True,
                                      thresholds={"mean_cosine": 1.01})
    assert kept.describe()["precision"] == "int8"
    assert quantize.quantized_count == count


@pytest.mark.slow
def test_black_calibration_is_a_cache_miss_and_agrees_less(int8_kitchen, kitchen_model,
                                                          photo_sets):
    count = quantize.quantized_count
    black = preprocess_input(np.zeros((4, 150, 150, 3), np.float32))
    with pytest.warns(AccuracyWarning):
        broken = optimize_for_inference(kitchen_model, "int8", calibration=black,
                                        held_out=photo_sets[1])
    assert quantize.quantized_count == count + 1
    bad, good = broken.describe()["int8"], int8_kitchen.describe()["int8"]
    assert bad["agreement"]["mean_cosine"] < good["agreement"]["mean_cosine"] - 0.01
    assert bad["passed"] is False and broken.describe()["precision"] == "float32"


def test_int8_without_calibration_is_one_error(kitchen_model):
    with pytest.raises(ValueError, match=r"needs calibration images.*calibration=None"):
        optimize_for_inference(kitchen_model, "int8")
    with pytest.raises(ConfigError, match=r"only with precision='int8'.*'auto'"):
        optimize_for_inference(kitchen_model, calibration=np.zeros((2, 150, 150, 3)))
    with pytest.raises(ConfigError, match=r"runs on OpenVINO.*'keras'"):
        optimize_for_inference(kitchen_model, "int8", calibration=np.zeros((2, 150, 150, 3)),
                               runtime="keras")


@pytest.mark.slow
def test_cli_quantize_then_classify_equals_python_and_explain_refuses(
        int8_kitchen, photo_sets, run_cli, tmp_path):
    calibration, held_out = photo_sets
    out = tmp_path / "kitchen_int8"
    source = realweights.package_root() / realweights.MODEL_FILE
    status, stdout, stderr = run_cli("quantize", source, "--calibration", calibration,
                                     "--held-out", held_out, "--output", out)
    assert status == 0, stderr
    assert stdout.startswith(f"{out}: int8, calibrated on 6 images; on 9 held-out")
    assert stdout.count("\n") == 1
    assert sorted(os.listdir(out)) == ["model.bin", "model.xml", "report.json"]
    report = json.loads((out / "report.json").read_text())
    assert report["model"]["input_size"] == [150, 150] and report["model"]["classes"] == 6
    # Its float parts run as its report was measured: bf16 only where this CPU
    # has it, float32 for a report that says so or (older folders) says nothing.
    from keras_xception.inference import int8_folder

    recorded = report["settings"]["inference_precision_hint"]
    assert recorded == quantize.float_hint()
    assert int8_folder.load_folder(out)[0].describe()["float_parts"] == recorded
    for settings in ({**report["settings"], "inference_precision_hint": "f32"}, None):
        older = tmp_path / f"older_{settings is None}"
        shutil.copytree(out, older)
        edited = dict(report, settings=settings)
        if settings is None:
            del edited["settings"]
        (older / "report.json").write_text(json.dumps(edited))
        assert int8_folder.load_folder(older)[0].describe()["float_parts"] == "f32"
    assert int8_kitchen.describe()["float_parts"] == recorded

    status, stdout, stderr = run_cli("classify", held_out, "--model", out, "--top", "6",
                                     "--json")
    assert status == 0, stderr
    got = {os.path.basename(r["path"]): {p["class_index"]: p["score"]
                                         for p in r["predictions"]}
           for r in json.loads(stdout)}
    files, _ = _held_out_pixels(photo_sets)
    from keras_xception import images

    x = preprocess_input(np.stack([images.decode(f, (150, 150)) for f in files]))
    logits = int8_kitchen.predict(x)
    e = np.exp(logits - logits.max(1, keepdims=True))
    expected = e / e.sum(1, keepdims=True)
    for f, row in zip(files, expected):
        np.testing.assert_allclose([got[f.name][i] for i in range(6)], row, atol=1e-5)

    # As a batch job: the same scores, and the manifest says int8 ran.
    status, stdout, stderr = run_cli("classify", held_out, "--model", out, "--top", "6",
                                     "--output", tmp_path / "classes", "--engine", "local",
                                     "--json")
    assert status == 0, stderr
    assert json.loads(stdout)["precision"] == "int8"
    import pyarrow.dataset as pds

    table = pds.dataset(tmp_path / "classes", format="parquet").to_table().to_pylist()
    rows = {os.path.basename(r["path"]): dict(zip(r["class_index"], r["score"]))
            for r in table}
    for f, row in zip(files, expected):
        np.testing.assert_allclose([rows[f.name][i] for i in range(6)], row, atol=1e-5)
    # A float precision asked of it is one line, before anything is written.
    status, stdout, stderr = run_cli("embed", held_out, "--model", out, "--precision",
                                     "float32", "--output", tmp_path / "float",
                                     "--engine", "local")
    assert (status, stdout) == (1, "") and stderr.count("\n") == 1
    assert "is an int8 model already" in stderr and "'float32'" in stderr
    assert not (tmp_path / "float").exists()

    status, stdout, stderr = run_cli("explain", held_out, "--model", out,
                                     "--output", tmp_path / "overlays")
    assert status == 1 and stdout == ""
    assert stderr.strip().count("\n") == 0 and "int8 model" in stderr
    assert "no gradients" in stderr


def test_quantize_refuses_an_existing_output(run_cli, tmp_path, photo_sets):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "model.xml").write_text("x")
    status, stdout, stderr = run_cli("quantize", "imagenet", "--calibration",
                                     photo_sets[0], "--output", out)
    assert (status, stdout) == (1, "")
    assert stderr == f"error: {out} exists already; remove it or pick another path.\n"


def test_interrupted_write_leaves_no_folder(tmp_path, monkeypatch):
    import openvino

    def save_half(model, path, **kwargs):
        with open(path, "w") as f:
            f.write("<net")
        raise KeyboardInterrupt

    monkeypatch.setattr(openvino, "save_model", save_half)
    out = tmp_path / "int8"
    with pytest.raises(KeyboardInterrupt):
        quantize.write_folder(out, object(), {"format": quantize.FORMAT})
    assert os.listdir(tmp_path) == []  # Neither the folder nor its temporary.


@pytest.mark.parametrize("options, message", [
    (("--precision", "int8"), "error: --precision int8 needs --calibration DIR"),
    (("--calibration", "."), "error: --calibration is for --precision int8"),
    (("--precision", "int8", "--calibration", ".", "--output", "out"),
     "error: --precision int8 is not for a batch job"),
])
def test_classify_int8_options_are_checked_before_work(run_cli, kitchen_photos, options,
                                                       message):
    status, stdout, stderr = run_cli("classify", kitchen_photos[0], *options)
    assert (status, stdout) == (1, "")
    assert stderr.startswith(message) and stderr.count("\n") == 1


@pytest.mark.parametrize("folder, files, message", [
    ("empty", {}, "error: --calibration holds no image."),
    ("one", {"a.jpg": "photo"}, "error: int8 needs at least 2 calibration images"),
    ("text", {"a.jpg": b"not an image"}, "error: Cannot read"),
])
def test_quantize_checks_calibration_images_before_loading_the_model(
        run_cli, tmp_path, kitchen_photos, monkeypatch, folder, files, message):
    from keras_xception import source

    def never(*args, **kwargs):
        raise AssertionError("the model was loaded before the calibration images were checked")

    monkeypatch.setattr(source.Source, "load", never)
    calibration = tmp_path / folder
    calibration.mkdir()
    for name, content in files.items():
        if content == "photo":
            shutil.copy(kitchen_photos[0], calibration / name)
        else:
            (calibration / name).write_bytes(content)
    model = realweights.package_root() / realweights.MODEL_FILE
    status, stdout, stderr = run_cli("quantize", model, "--calibration", calibration,
                                     "--output", tmp_path / "out")
    assert (status, stdout) == (1, "")
    assert stderr.startswith(message) and stderr.count("\n") == 1, stderr
    assert not (tmp_path / "out").exists()


def _fake_int8_folder(folder, xml="<net", binary=b"", report=True):
    folder.mkdir()
    (folder / "model.xml").write_text(xml)
    (folder / "model.bin").write_bytes(binary)
    if report:
        (folder / "report.json").write_text(json.dumps({"format": quantize.FORMAT, "model": {
            "outputs": "classes", "units": 6, "input_size": [150, 150],
            "rescales_itself": False, "score_rule": "the softmax of the model's outputs",
            "classes": 6, "class_names": None, "imagenet": False}}))
    return folder


def test_a_damaged_int8_folder_is_one_line(run_cli, tmp_path, kitchen_photos):
    damaged = _fake_int8_folder(tmp_path / "damaged")
    status, stdout, stderr = run_cli("classify", kitchen_photos[0], "--model", damaged)
    assert (status, stdout) == (1, "")
    assert stderr.startswith("error: ") and stderr.count("\n") == 1, stderr
    assert "OpenVINO cannot read" in stderr and "keras-xception quantize" in stderr

    no_report = _fake_int8_folder(tmp_path / "no_report", report=False)
    status, stdout, stderr = run_cli("classify", kitchen_photos[0], "--model", no_report)
    assert (status, stdout) == (1, "")
    assert stderr.startswith("error: ") and stderr.count("\n") == 1, stderr
    assert "not an int8 model" in stderr and "lacks report.json" in stderr


def test_a_damaged_cache_entry_is_quantized_again(keras_home):
    import keras

    inputs = keras.Input((16, 16, 3))
    x = keras.layers.Conv2D(4, 3, name="conv")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(x))
    images = np.random.default_rng(0).uniform(-1, 1, (8, 16, 16, 3)).astype(np.float32)
    _, first, folder = quantize.quantize_model(model, images)
    assert first["cache"] == "written"
    with open(folder / quantize.IR_BIN, "r+b") as f:
        f.truncate(16)  # A damaged entry: OpenVINO refuses to read it.
    before = quantize.quantized_count
    quantized, again, folder = quantize.quantize_model(model, images)
    assert quantize.quantized_count == before + 1
    assert again["cache"] == "written" and quantize.read_report(folder) is not None
    assert os.path.getsize(folder / quantize.IR_BIN) > 16
    assert [p.name for p in folder.parent.iterdir()] == [folder.name]  # Nothing left aside.
    _, hit, _ = quantize.quantize_model(model, images)
    assert hit["cache"] == "hit"


@pytest.mark.parametrize("files, message", [
    ((), "error: --calibration holds no image."),
    (("a.jpg",), "error: --precision int8 needs at least 2 images in --calibration"),
])
def test_classify_int8_counts_calibration_images_before_loading_the_model(
        run_cli, tmp_path, kitchen_photos, monkeypatch, files, message):
    from keras_xception import source

    def never(*args, **kwargs):
        raise AssertionError("the model was loaded before --calibration was checked")

    monkeypatch.setattr(source.Source, "load", never)
    calibration = tmp_path / "calibration"
    calibration.mkdir()
    for name in files:
        shutil.copy(kitchen_photos[0], calibration / name)
    model = realweights.package_root() / realweights.MODEL_FILE
    status, stdout, stderr = run_cli("classify", kitchen_photos[0], "--model", model,
                                     "--precision", "int8", "--calibration", calibration)
    assert (status, stdout) == (1, "")
    assert stderr.startswith(message) and stderr.count("\n") == 1, stderr


def test_quantize_refuses_an_int8_model_before_loading_it(run_cli, tmp_path, photo_sets,
                                                          monkeypatch):
    from keras_xception import source

    def never(*args, **kwargs):
        raise AssertionError("the int8 model was loaded")

    monkeypatch.setattr(source.Source, "load", never)
    folder = _fake_int8_folder(tmp_path / "int8")
    status, stdout, stderr = run_cli("quantize", folder, "--calibration", photo_sets[0],
                                     "--output", tmp_path / "again")
    assert (status, stdout) == (1, "")
    assert stderr == (f"error: {folder} is an int8 model already; quantize the float model "
                      "it came from (its report.json names it under model.source).\n")


@pytest.mark.parametrize("appeared", ["folder", "file"])
def test_quantize_to_an_output_that_appears_meanwhile_is_one_line(
        run_cli, tmp_path, photo_sets, monkeypatch, appeared):
    import openvino as ov
    from openvino import opset13

    from keras_xception.inference import int8_folder

    out = tmp_path / "out"

    def another_process_wins(folded, calibration, held_out=None):
        if appeared == "folder":  # A second quantize to the same OUT, done first.
            out.mkdir()
            (out / "model.xml").write_text("theirs")
        else:
            out.write_text("theirs")
        x = opset13.parameter([1, 2], np.float32)
        report = {"agreement": {"mean_cosine": 1.0, "min_cosine": 1.0,
                                "top1_agreement": None, "top5_overlap": None},
                  "calibration": {"images": 3, "held_out": 1}}
        return ov.Model([opset13.relu(x)], [x]), report, None

    monkeypatch.setattr(int8_folder, "quantize_model", another_process_wins)
    model = realweights.package_root() / realweights.MODEL_FILE
    status, stdout, stderr = run_cli("quantize", model, "--calibration", photo_sets[0],
                                     "--output", out)
    assert (status, stdout) == (1, "")
    assert stderr == (f"error: {out} appeared while the model was quantized; remove it "
                      "or pick another path. Nothing was written.\n")
    assert sorted(os.listdir(tmp_path)) == ["out"]  # No temporary left beside it.
    assert (out / "model.xml" if appeared == "folder" else out).read_text() == "theirs"


def test_classify_on_an_int8_features_folder_says_so(run_cli, tmp_path, kitchen_photos):
    folder = _fake_int8_folder(tmp_path / "features")
    report = json.loads((folder / "report.json").read_text())
    report["model"].update(outputs="features", units=2048, classes=None, score_rule=None)
    (folder / "report.json").write_text(json.dumps(report))
    status, stdout, stderr = run_cli("classify", kitchen_photos[0], "--model", folder)
    assert (status, stdout) == (1, "")
    assert stderr == (f"error: {folder} is an int8 model of the features (`keras-xception "
                      "quantize --features`), for embed; for classes, quantize without "
                      "--features.\n")


@pytest.mark.parametrize("field, value", [
    ("input_size", None), ("input_size", "ab"), ("classes", "x"), ("rescales_itself", None),
    ("outputs", None), ("class_names", 5), ("class_names", ["cup"]), ("units", 0),
])
def test_an_edited_int8_report_is_one_line(run_cli, tmp_path, kitchen_photos, field, value):
    folder = _fake_int8_folder(tmp_path / "edited")
    report = json.loads((folder / "report.json").read_text())
    if value is None:
        del report["model"][field]
    else:
        report["model"][field] = value
    (folder / "report.json").write_text(json.dumps(report))
    status, stdout, stderr = run_cli("classify", kitchen_photos[0], "--model", folder)
    assert (status, stdout) == (1, "")
    assert stderr == (f"error: {folder} is not a usable int8 model: its report.json has no "
                      f"valid model.{field} (was it edited?); write it again with "
                      "`keras-xception quantize`.\n")


@pytest.mark.parametrize("fmt, out", [("onnx", "ex.onnx"), ("saved_model", "ex"),
                                      ("openvino", "ex")])
def test_export_refuses_an_int8_model_before_loading_it(run_cli, tmp_path, monkeypatch,
                                                        fmt, out):
    from keras_xception import source

    def never(*args, **kwargs):
        raise AssertionError("the int8 model was loaded")

    monkeypatch.setattr(source.Source, "load", never)
    folder = _fake_int8_folder(tmp_path / "int8")
    status, stdout, stderr = run_cli("export", folder, tmp_path / out, "--format", fmt)
    assert (status, stdout) == (1, "")
    assert stderr == (f"error: {folder} is an int8 model, an OpenVINO IR folder already "
                      "(model.xml, model.bin); export the float32 model it was quantized "
                      "from.\n")
    assert not (tmp_path / out).exists()


@pytest.mark.parametrize("precision, calibration", [("float32", False), ("bfloat16", False),
                                                    ("int8", True)])
def test_classify_refuses_a_precision_for_an_int8_model_before_loading_it(
        run_cli, tmp_path, kitchen_photos, photo_sets, monkeypatch, precision, calibration):
    from keras_xception import source

    def never(*args, **kwargs):
        raise AssertionError("the int8 model was loaded before --precision was checked")

    monkeypatch.setattr(source.Source, "load", never)
    folder = _fake_int8_folder(tmp_path / "int8")
    options = ("--calibration", photo_sets[0]) if calibration else ()
    status, stdout, stderr = run_cli("classify", kitchen_photos[0], "--model", folder,
                                     "--precision", precision, *options)
    assert (status, stdout) == (1, "")
    assert stderr == (f"error: {folder} is an int8 model already; it runs as it is "
                      f"(precision 'auto' or 'int8', no calibration). Received: "
                      f"precision={precision!r}" + (", calibration=...\n" if calibration
                                                    else "\n"))


@pytest.mark.parametrize("command, outputs, message", [
    ("embed", "classes", "is an int8 classifier; embeddings need an int8 model of the "
     "features: keras-xception quantize ... --features."),
    ("classify", "features", "is an int8 model of the features (`keras-xception quantize "
     "--features`), for embed; for classes, quantize without --features."),
])
def test_a_batch_job_on_an_unfit_int8_model_writes_nothing(
        run_cli, tmp_path, kitchen_photos, monkeypatch, command, outputs, message):
    from keras_xception import source

    def never(*args, **kwargs):
        raise AssertionError("the int8 model was loaded before its fitness was checked")

    monkeypatch.setattr(source.Source, "load", never)
    folder = _fake_int8_folder(tmp_path / "int8")
    if outputs == "features":
        report = json.loads((folder / "report.json").read_text())
        report["model"].update(outputs="features", units=2048, classes=None,
                               score_rule=None)
        (folder / "report.json").write_text(json.dumps(report))
    out = tmp_path / "out"
    status, stdout, stderr = run_cli(command, kitchen_photos[0], "--model", folder,
                                     "--output", out, "--engine", "local")
    assert (status, stdout) == (1, "")
    assert stderr == f"error: {folder} {message}\n"
    assert not out.exists()  # Not even the job's lock or record.


def test_calibration_decodes_at_most_max_images_evenly_spaced(photo_sets, monkeypatch):
    from keras_xception import images

    monkeypatch.setattr(quantize, "MAX_IMAGES", 3)
    files = images.find_images([photo_sets[0]])
    assert len(files) == 6
    decoded = []
    decode = images.decode
    monkeypatch.setattr(images, "decode", lambda f, size: decoded.append(f) or decode(f, size))
    pixels = quantize.decode_images(photo_sets[0], (32, 32))
    assert decoded == files[0::2] and pixels.shape == (3, 32, 32, 3)


@pytest.mark.parametrize("flags, cap, expected", [
    ({"avx2", "avx512_vnni", "avx512_bf16"}, None, "bf16"),   # Zen 4
    ({"avx2", "amx_int8", "amx_bf16"}, None, "bf16"),          # an AMX Xeon
    ({"avx2", "fma"}, None, "f32"),                            # AVX2 only
    ({"avx2", "avx512_vnni", "avx512_bf16"}, "AVX2", "f32"),   # oneDNN capped
    ({"avx2", "avx512_vnni", "avx512_bf16"}, "AVX512_CORE_VNNI", "f32"),
])
def test_float_parts_of_int8_run_in_bf16_only_where_the_cpu_has_it(
        monkeypatch, flags, cap, expected):
    from keras_xception.inference import cpu

    monkeypatch.setattr(cpu, "cpu_flags", lambda *a, **k: frozenset(flags))
    for variable in cpu.ISA_VARIABLES:
        monkeypatch.delenv(variable, raising=False)
    if cap:
        monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", cap)
    assert quantize.SETTINGS["inference_precision_hint"] == "auto"
    assert quantize.float_hint() == expected


@pytest.mark.parametrize("recorded, here, expected", [
    ("bf16", "bf16", "bf16"), ("bf16", "f32", "f32"),   # measured in bf16, no bf16 here
    ("f32", "bf16", "f32"), ("f32", "f32", "f32"),      # measured in float32: kept
])
def test_an_int8_model_runs_its_float_parts_as_its_report_was_measured(
        monkeypatch, recorded, here, expected):
    monkeypatch.setattr(quantize, "float_hint", lambda: here)
    assert quantize.run_hint(recorded) == expected
