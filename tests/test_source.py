"""One model source: every command reads a model the same way and gives one answer.

The reference in each test is independent of the package: the model loaded
with `keras.saving.load_model`, photos decoded and resized with Pillow here,
and the softmax written out with NumPy.
"""

import json
import os
import sys

import keras
import numpy as np
import pyarrow.parquet as pq
import pytest

from keras_xception import source
from keras_xception.errors import ConfigError, WeightsError
from tests import realweights
from tests.realweights import pillow_pixels

SIZE = 150  # keras.io's transfer-learning guide resizes to 150x150.


def softmax(x):
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


@pytest.fixture(scope="module")
def kerasio_model(imagenet_notop_arrays, tmp_path_factory):
    """A fine-tuned model built as keras.io's transfer-learning guide builds it.

    `Rescaling(1/127.5, offset=-1)` with Keras's default name, then the real
    ImageNet Xception base, pooling and a 3-class Dense head giving logits.
    """
    keras.utils.set_random_seed(3)
    base = keras.applications.Xception(weights=None, include_top=False,
                                       input_shape=(SIZE, SIZE, 3))
    weighted = [layer for layer in base.layers if layer.weights]
    for layer, values in zip(weighted, imagenet_notop_arrays, strict=True):
        layer.set_weights(values)
    inputs = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.Rescaling(scale=1 / 127.5, offset=-1)(inputs)
    x = base(x, training=False)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(3)(x)
    model = keras.Model(inputs, outputs)
    path = tmp_path_factory.mktemp("kerasio") / "kerasio.keras"
    model.save(path)
    return path


@pytest.fixture(scope="module")
def photos(kitchen_photos):
    return kitchen_photos[:3]


@pytest.fixture(scope="module")
def reference(kerasio_model, photos):
    """Probabilities of the keras.io model on Pillow's pixels, computed here."""
    model = keras.saving.load_model(kerasio_model, compile=False)
    logits = model.predict(pillow_pixels(photos, SIZE), verbose=0)
    return softmax(logits.astype(np.float64))


def test_source_reads_a_kerasio_model_from_its_file_alone(kerasio_model):
    src = source.open_source(kerasio_model, need_top=True)
    assert (src.kind, src.has_top, src.classes, src.input_size) == (
        "keras", True, 3, (SIZE, SIZE))
    assert src.class_names is None and src.class_name(2) == "2"
    assert src.score_rule == source.SOFTMAX_OF_LOGITS  # Read from config.json.
    assert "tensorflow" not in src.identity()
    # Opened once per file and process: the same object, hashed once.
    assert source.open_source(str(kerasio_model), need_top=True) is src
    loaded = src.load()
    assert loaded.rescales_itself  # Its Rescaling has Keras's default name.
    assert loaded.score_rule == source.SOFTMAX_OF_LOGITS


@pytest.mark.slow
def test_every_command_gives_the_kerasio_model_one_answer(
    run_cli, kerasio_model, photos, reference, tmp_path
):
    status, out, err = run_cli("classify", *photos, "--model", kerasio_model,
                               "--json", "--precision", "float32")
    assert status == 0, err
    interactive = json.loads(out)
    # Three classes: the default --top is all three, not 5.
    assert [len(r["predictions"]) for r in interactive] == [3, 3, 3]
    assert {r["score_rule"] for r in interactive} == {source.SOFTMAX_OF_LOGITS}

    status, _, err = run_cli("classify", *photos, "--model", kerasio_model,
                             "--output", tmp_path / "batch", "--engine", "local")
    assert status == 0, err
    manifest = json.loads((tmp_path / "batch" / "_manifest.json").read_text())
    assert manifest["score_rule"] == source.SOFTMAX_OF_LOGITS
    batch = pq.read_table(tmp_path / "batch").to_pylist()
    batch = {row["path"]: row for row in batch}

    status, out, err = run_cli("explain", *photos, "--model", kerasio_model,
                               "--output", tmp_path / "png", "--json")
    assert status == 0, err
    explained = json.loads(out)

    for i, result in enumerate(interactive):
        scores = {p["class_index"]: p["score"] for p in result["predictions"]}
        # Against the independent reference: probabilities, preprocessed once.
        got = np.array([scores[c] for c in range(3)])
        np.testing.assert_allclose(got, reference[i], atol=0.03)
        assert max(scores, key=scores.get) == int(np.argmax(reference[i]))
        # Between commands: the same decoder, so the same numbers.
        row = batch[result["path"]]
        np.testing.assert_allclose(
            row["score"], [p["score"] for p in result["predictions"]], atol=1e-5)
        assert row["class_index"] == [p["class_index"] for p in result["predictions"]]
        assert explained[i]["class_index"] == result["predictions"][0]["class_index"]
        np.testing.assert_allclose(explained[i]["score"],
                                   result["predictions"][0]["score"], atol=1e-5)


@pytest.mark.slow
def test_classify_a_fine_tuned_model_interactively(run_cli, photos):
    """`classify photo.jpg --model kitchen.keras`: refused before; its classes now."""
    model_file = realweights.package_root() / realweights.MODEL_FILE
    status, out, err = run_cli("classify", photos[0], "--model", model_file,
                               "--jsonl", "--top", "2", "--precision", "float32")
    assert status == 0, err
    (record,) = [json.loads(line) for line in out.splitlines()]
    model = keras.saving.load_model(model_file, compile=False)
    size = model.input_shape[1]
    # This model takes preprocess_input's [-1, 1]: it has no Rescaling.
    logits = model.predict(pillow_pixels(photos[:1], size) / 127.5 - 1, verbose=0)[0]
    expected = softmax(logits.astype(np.float64))
    best = np.argsort(-expected)[:2]
    assert [p["class_index"] for p in record["predictions"]] == best.tolist()
    np.testing.assert_allclose([p["score"] for p in record["predictions"]],
                               expected[best], atol=0.03)


@pytest.mark.slow
def test_a_top_above_the_classes_is_one_line_before_any_work(run_cli, kerasio_model,
                                                              photos, tmp_path):
    for argv in (["classify", photos[0], "--top", "4"],
                 ["classify", photos[0], "--top", "4", "--output", tmp_path / "o"],
                 ["explain", photos[0], "--top", "4", "--output", tmp_path / "p"]):
        status, out, err = run_cli(*argv, "--model", kerasio_model)
        assert status == 1 and out == ""
        assert err == ("error: --top must be from 1 to 3, the model's classes. "
                       "Received: --top 4\n")
    # Nothing was written, so the corrected command is not "another model".
    assert not (tmp_path / "o").exists() and not (tmp_path / "p").exists()
    status, _, err = run_cli("classify", photos[0], "--top", "2", "--model",
                             kerasio_model, "--output", tmp_path / "o")
    assert status == 0, err


@pytest.mark.slow
def test_embed_of_a_kerasio_model_goes_through_its_own_rescaling(kerasio_model,
                                                                   photos):
    src = source.open_source(kerasio_model)
    loaded = src.load(embed=True)
    assert loaded.rescales_itself and loaded.model.outputs[0].shape[-1] == 2048
    pixels = pillow_pixels(photos, SIZE)
    base = keras.saving.load_model(kerasio_model, compile=False).get_layer("xception")
    expected = base.predict(pixels / 127.5 - 1, verbose=0).mean(axis=(1, 2))
    got = loaded.model.predict(loaded.prepare(pixels), verbose=0)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("layers, expected", [
    ([], False),
    ([keras.layers.Rescaling(1 / 255.0)], True),
    ([keras.layers.Normalization(mean=127.5, variance=127.5 ** 2)], True),
])
def test_the_input_rule_sees_rescaling_in_a_sequential(layers, expected):
    base = keras.applications.Xception(weights=None, include_top=False,
                                       input_shape=(71, 71, 3))
    model = keras.Sequential([keras.Input((71, 71, 3)), *layers, base,
                              keras.layers.GlobalAveragePooling2D(),
                              keras.layers.Dense(1, activation="sigmoid")])
    assert source.rescales_itself(model) is expected
    assert source.score_rule(model) == source.MODEL_SIGMOID


def test_scores_are_probabilities_by_one_rule():
    logits = np.array([[2.0, 1.0, -1.0]], np.float32)
    np.testing.assert_allclose(source.probabilities(logits, source.SOFTMAX_OF_LOGITS),
                               softmax(logits), rtol=1e-6)
    np.testing.assert_allclose(
        source.probabilities(np.array([[np.log(3.0)]]), source.SIGMOID_OF_LOGIT),
        [[0.25, 0.75]], rtol=1e-6)
    own = np.array([[0.7, 0.2, 0.1]], np.float32)
    assert source.probabilities(own, source.MODEL_SOFTMAX).tolist() == own.tolist()


def test_weights_sources_are_resolved_checked_and_hashed_once(imagenet_notop_files,
                                                              monkeypatch):
    from keras_xception.weights import integrity, validate

    path = imagenet_notop_files["keras3"]
    source._opened.clear()
    source._digests.clear()
    calls = {"inspect": 0, "hash": 0}
    real_inspect, real_digests = validate.inspect, integrity.file_digests

    def counting_inspect(*args, **kwargs):
        calls["inspect"] += 1
        return real_inspect(*args, **kwargs)

    def counting_digests(*args, **kwargs):
        calls["hash"] += 1
        return real_digests(*args, **kwargs)

    monkeypatch.setattr(validate, "inspect", counting_inspect)
    monkeypatch.setattr(integrity, "file_digests", counting_digests)
    first = source.open_source(path)
    for _ in range(3):
        assert source.open_source(os.fspath(path)) is first
    assert calls == {"inspect": 1, "hash": 1}
    assert not first.has_top and first.classes is None
    with pytest.raises(ConfigError, match="without a classifier"):
        source.open_source(path, need_top=True)


def test_a_photo_given_as_the_model_names_what_a_model_can_be(kitchen_photos):
    with pytest.raises(WeightsError) as info:
        source.open_source(kitchen_photos[0])
    message = str(info.value)
    assert str(kitchen_photos[0]) in message and "JPEG" in message
    assert ".keras" in message and "'imagenet'" in message and "\n" not in message


@pytest.mark.parametrize("content, match", [
    (b"not a zip", "not a readable .keras model file|not a complete HDF5"),
    (None, "not a Keras model"),
])
def test_a_broken_keras_file_is_one_line(tmp_path, content, match):
    import zipfile

    path = tmp_path / "m.keras"
    if content is None:
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("other.txt", "x")
    else:
        path.write_bytes(content)
    with pytest.raises(WeightsError, match=match) as info:
        source.open_source(path)
    # One message, said once.
    assert str(info.value).count("model.save()") == 1, info.value


def test_jsonl_with_output_is_refused_not_ignored(run_cli, kerasio_model, photos,
                                                  tmp_path):
    status, out, err = run_cli("classify", photos[0], "--model", kerasio_model,
                               "--output", tmp_path / "o", "--jsonl")
    assert status == 1 and out == ""
    assert err.startswith("error: --jsonl ") and err.count("\n") == 1
    assert not (tmp_path / "o").exists()


def test_batch_options_without_output_are_named(run_cli, photos):
    status, out, err = run_cli("classify", photos[0], "--shard-size", "3",
                               "--overwrite")
    assert status == 1 and out == ""
    assert err == ("error: --shard-size, --overwrite apply only to a batch job: add "
                   "--output DIR to write Parquet results there, or leave them out.\n")


@pytest.mark.slow
def test_a_killed_exports_temporary_is_removed_by_the_next_export(
    run_cli, kerasio_model, tmp_path
):
    import subprocess

    # OpenVINO's folder: the quickest export to write (an ONNX one takes
    # about 15 s more); the temporaries are the same for every format.
    out = tmp_path / "model_openvino"
    # A process that dies (SIGKILL-like, no clean-up) while writing `out`.
    code = (
        "import os\n"
        "from keras_xception import fileio\n"
        f"writing = fileio.atomic_path({str(out)!r}, directory=True)\n"
        "tmp = writing.__enter__()\n"
        "(tmp / 'model.xml').write_bytes(b'half')\n"
        "os._exit(9)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=False)
    left = [p for p in tmp_path.iterdir() if p.name.startswith(".model_openvino.")]
    assert len(left) == 1
    status, _, err = run_cli("export", kerasio_model, out, "--format", "openvino")
    assert status == 0, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model_openvino"]
    assert sorted(p.name for p in out.iterdir()) == ["model.bin", "model.xml"]


def test_a_missing_extra_is_one_line_before_any_work(run_cli, monkeypatch, photos,
                                                      tmp_path):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "pyarrow" else real(name, *a))
    status, out, err = run_cli("embed", photos[0], "--output", tmp_path / "o")
    assert status == 1 and out == ""
    assert err == ("error: embed needs pyarrow, which is not installed: "
                   "pip install 'keras-xception[batch]'\n")
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_an_embed_run_reads_and_hashes_its_weights_once(imagenet_notop_files,
                                                        kitchen_photos, monkeypatch,
                                                        tmp_path):
    """Before: resolved twice, parsed three times, hashed once or twice."""
    from keras_xception import batch
    from keras_xception.weights import integrity, validate

    source._opened.clear()
    source._digests.clear()
    calls = {"parse": 0, "hash": 0}
    real_summarize, real_digests = validate._summarize, integrity.file_digests

    def counting_summarize(*args, **kwargs):
        calls["parse"] += 1
        return real_summarize(*args, **kwargs)

    def counting_digests(*args, **kwargs):
        calls["hash"] += 1
        return real_digests(*args, **kwargs)

    monkeypatch.setattr(validate, "_summarize", counting_summarize)
    monkeypatch.setattr(integrity, "file_digests", counting_digests)
    batch.run("embed", [kitchen_photos[0]], tmp_path / "out", engine="local",
              weights=str(imagenet_notop_files["keras3"]))
    # Checked once before any work, read once to build the model; hashed once.
    assert calls == {"parse": 2, "hash": 1}


def _small_base():
    return keras.applications.Xception(weights=None, include_top=False,
                                       input_shape=(71, 71, 3))


def _save(model, tmp_path, name="m.keras", class_names=None):
    from keras_xception.training.saving import save_classifier

    path = tmp_path / name
    save_classifier(model, path, class_names=class_names)
    source._opened.clear()
    return path


@pytest.mark.slow
def test_a_binary_model_with_one_sigmoid_output_scores_both_classes(tmp_path):
    inputs = keras.Input((71, 71, 3))
    x = keras.layers.GlobalAveragePooling2D()(_small_base()(inputs))
    model = keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid")(x))
    src = source.open_source(_save(model, tmp_path, class_names=["cat", "dog"]),
                             need_top=True)
    # The single output is the probability of class 1 ("dog").
    assert (src.classes, src.class_names, src.check_top(None)) == (2, ("cat", "dog"), 2)
    loaded = src.load()
    assert (loaded.score_rule, loaded.classes) == (source.MODEL_SIGMOID, 2)
    x0 = np.random.default_rng(0).uniform(0, 255, (2, 71, 71, 3)).astype("float32")
    p = model.predict(x0 / 127.5 - 1, verbose=0)
    np.testing.assert_allclose(loaded.scores(loaded.model.predict(loaded.prepare(x0),
                                                                  verbose=0)),
                               np.concatenate([1 - p, p], axis=1), atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("head", ["activation", "softmax_layer", "ops_softmax"])
def test_a_softmax_after_the_dense_layer_is_read_as_the_models_own(tmp_path, head):
    inputs = keras.Input((71, 71, 3))
    x = keras.layers.GlobalAveragePooling2D()(_small_base()(inputs))
    x = keras.layers.Dense(3)(x)
    x = {"activation": keras.layers.Activation("softmax"),
         "softmax_layer": keras.layers.Softmax(),
         "ops_softmax": keras.ops.softmax}[head](x)
    model = keras.Model(inputs, x)
    src = source.open_source(_save(model, tmp_path, class_names=["a", "b", "c"]),
                             need_top=True)
    assert (src.classes, src.check_top(None), src.score_rule) == (
        3, 3, source.MODEL_SOFTMAX)
    assert src.load().score_rule == source.MODEL_SOFTMAX  # Not softmax twice.


def test_a_rescaling_inside_a_preprocessing_block_counts(tmp_path):
    inputs = keras.Input((71, 71, 3))
    block = keras.Sequential([keras.layers.Rescaling(1 / 127.5, offset=-1)])
    x = _small_base()(block(inputs))
    model = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.Flatten()(x)))
    assert source.rescales_itself(model)


@pytest.mark.slow
def test_what_a_model_file_cannot_be_is_one_line(tmp_path):
    import zipfile

    inputs = keras.Input((71, 71, 3))
    x = keras.layers.GlobalAveragePooling2D()(_small_base()(inputs))
    two = keras.Model(inputs, [keras.layers.Dense(2)(x), keras.layers.Dense(3)(x)])
    with pytest.raises(ConfigError, match="with 2 outputs"):
        source.open_source(_save(two, tmp_path, "two.keras"))
    path = _save(keras.Model(inputs, keras.layers.Dense(2)(x)), tmp_path, "one.keras")
    rewritten = tmp_path / "names.keras"
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(rewritten, "w") as dst:
        for info in src.infolist():
            data = src.read(info.filename)
            if info.filename == "metadata.json":
                data = json.dumps({**json.loads(data), "class_names": 5}).encode()
            dst.writestr(info, data)
    with pytest.raises(WeightsError, match="not a list of names"):
        source.open_source(rewritten)
    for given in ("", "~no_such_user_here/m.keras"):
        with pytest.raises((ConfigError, WeightsError)):
            source.open_source(given)


def test_a_batch_jobs_identity_keeps_its_kind(kerasio_model):
    from keras_xception.batch.models import ModelSpec

    spec = ModelSpec("embed", source.open_source(kerasio_model))
    identity = spec.identity()
    assert identity["kind"] == "embed" and identity["source_kind"] == "keras"
