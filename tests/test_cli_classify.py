"""`keras-xception classify`, driven as a user would: in a subprocess."""

import json
import os
import shutil

import numpy as np
import pytest

from tests import commandline
from tests.test_inference import synthetic_top


def write_top_weights(path, notop_arrays):
    """A Keras 3 `.weights.h5` with the real no-top weights and a synthetic top."""
    import keras

    model = keras.applications.Xception(weights=None)
    weighted = [layer for layer in model.layers if layer.weights]
    for layer, values in zip(weighted, list(notop_arrays) + [synthetic_top()],
                             strict=True):
        layer.set_weights(values)
    model.save_weights(path)


@pytest.fixture(scope="module")
def top_weights(imagenet_notop_arrays, tmp_path_factory):
    path = tmp_path_factory.mktemp("top") / "xception_top.weights.h5"
    write_top_weights(path, imagenet_notop_arrays)
    return path


@pytest.fixture(scope="module")
def folder(kitchen_photos, tmp_path_factory):
    """Three photos (one in a subfolder) and a text file that is not an image."""
    root = tmp_path_factory.mktemp("photos")
    (root / "sub").mkdir()
    shutil.copy(kitchen_photos[0], root / "a.jpg")
    shutil.copy(kitchen_photos[1], root / "b.jpg")
    shutil.copy(kitchen_photos[2], root / "sub" / "c.JPG")
    (root / "notes.txt").write_text("not an image\n")
    return root


def classify(*args, env=None):
    return commandline.run("classify", *args, env=env)


def test_json_for_a_folder(folder, top_weights):
    done = classify(folder, "--weights", top_weights, "--json", "--top", "3",
                    "--batch-size", "2")
    assert done.returncode == 0, done.stderr
    # The CLI turns oneDNN on; its graph optimizer must not fail on this model.
    assert "remapper failed" not in done.stderr
    results = json.loads(done.stdout)
    assert [r["path"] for r in results] == [
        str(folder / "a.jpg"), str(folder / "b.jpg"), str(folder / "sub" / "c.JPG")
    ]  # notes.txt is not an image: not read
    for result in results:
        predictions = result["predictions"]
        assert [sorted(p) for p in predictions] == [["label", "score", "synset"]] * 3
        scores = [p["score"] for p in predictions]
        assert scores == sorted(scores, reverse=True) and 0 < scores[0] <= 1
        assert all(p["synset"].startswith("n") for p in predictions)

    # The same answer as the Python API with the same weights.
    from keras_xception import Xception, decode_predictions
    from keras_xception.preprocessing import load_image, preprocess_input

    model = Xception(weights=str(top_weights))
    x = np.stack([preprocess_input(load_image(r["path"])) for r in results])
    expected = decode_predictions(model.predict(x, verbose=0), top=3)
    for result, want in zip(results, expected):
        assert [p["synset"] for p in result["predictions"]] == [w[0] for w in want]
        np.testing.assert_allclose(
            [p["score"] for p in result["predictions"]], [w[2] for w in want],
            atol=1e-4,
        )


def test_bad_and_missing_files_are_named_and_the_rest_classified(
    folder, kitchen_photos, top_weights, tmp_path
):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"this is text, not a JPEG")
    missing = tmp_path / "missing.jpg"
    done = classify(kitchen_photos[3], broken, missing, folder / "a.jpg",
                    "--weights", top_weights, "--top", "2")
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert str(broken) in done.stderr and str(missing) in done.stderr
    # The readable table names both good photos, with two predictions each.
    assert str(kitchen_photos[3]) in done.stdout and str(folder / "a.jpg") in done.stdout
    assert str(broken) not in done.stdout
    assert sum(line.strip().startswith(("1.", "2.")) for line in done.stdout.splitlines()) == 4


def test_offline_without_cached_weights_says_what_to_do(folder, keras_home):
    done = classify(folder / "a.jpg", env=dict(os.environ))
    assert done.returncode == 1
    # Only the weights module's message (where the file goes): the weights
    # are looked for before TensorFlow is imported and starts logging.
    assert done.stderr.startswith("error: ") and done.stderr.count("\n") == 1
    assert str(keras_home) in done.stderr
    assert done.stdout == ""


def test_missing_weights_file_is_named(folder, tmp_path):
    done = classify(folder / "a.jpg", "--weights", tmp_path / "nope.h5")
    assert done.returncode == 1
    assert done.stderr.startswith("error: Weights file not found: ")
    assert str(tmp_path / "nope.h5") in done.stderr
    assert "Traceback" not in done.stderr and done.stdout == ""


def test_bad_arguments_exit_1_without_traceback(folder):
    done = classify(folder, "--top", "0")
    assert done.returncode == 1
    assert "--top" in done.stderr and "Traceback" not in done.stderr
