"""`keras-xception fine-tune`: its mistakes, each one line before any work,
and its runs.

The mistakes and the seed test run the command in this process; the run
that saves a model runs it as a user does, in a subprocess. One mistake
runs in a real process too (tests/test_cli_errors.py).
"""

import json
import os
import pathlib
import zipfile

import keras
import numpy as np
import pytest
from PIL import Image

from tests import commandline

ROOT = pathlib.Path(__file__).resolve().parents[1]


def cli(*args, timeout=300):
    """`keras-xception fine-tune ARGS...` in a real process, offline."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", KERAS_XCEPTION_OFFLINE="1")
    return commandline.run("fine-tune", *args, env=env, timeout=timeout, cwd=ROOT)


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("KERAS_XCEPTION_OFFLINE", "1")


def fine_tune(*args):
    """`keras-xception fine-tune ARGS...` in this process (offline: `offline`)."""
    return commandline.main("fine-tune", *args)


def make_dataset(root, classes=("cat", "dog"), per_class=4, size=40):
    """Class folders of small solid-colour PNGs, one colour per class."""
    rng = np.random.default_rng(0)
    for k, name in enumerate(classes):
        folder = root / name
        folder.mkdir(parents=True)
        for i in range(per_class):
            pixels = np.full((size, size, 3), 40 + 80 * k, "uint8")
            pixels += rng.integers(0, 30, pixels.shape, dtype="uint8")
            Image.fromarray(pixels).save(folder / f"{name}{i}.png")
    return root


def assert_clean_error(result, *fragments):
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert result.stderr.startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in result.stderr, result.stderr


def test_corrupt_and_non_image_files_are_named_before_training(tmp_path):
    data = make_dataset(tmp_path / "data")
    (data / "cat" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    good = data / "dog" / "dog0.png"
    (data / "dog" / "truncated.png").write_bytes(good.read_bytes()[:60])
    (data / "dog" / "notes.txt").write_text("labels by hand")
    (data / "dog" / ".DS_Store").write_bytes(b"\0\0")  # hidden: ignored
    result = fine_tune(data, "--output", tmp_path / "out.keras", "--weights", "none")
    assert_clean_error(
        result,
        "3 of the 11 files",
        "are not usable images",
        os.path.join("cat", "broken.jpg"),
        os.path.join("dog", "truncated.png"),
        os.path.join("dog", "notes.txt"),
    )
    assert ".DS_Store" not in result.stderr
    assert not (tmp_path / "out.keras").exists()


def test_empty_class_folder_is_an_error(tmp_path):
    data = make_dataset(tmp_path / "data")
    (data / "bird").mkdir()
    result = fine_tune(data, "--output", tmp_path / "out.keras", "--weights", "none")
    assert_clean_error(result, "empty class folder", "'bird'")


def test_single_class_is_an_error(tmp_path):
    data = make_dataset(tmp_path / "data", classes=("cat",))
    result = fine_tune(data, "--output", tmp_path / "out.keras", "--weights", "none")
    assert_clean_error(result, "single class folder ('cat')", "at least 2 classes")


def test_missing_data_dir_is_an_error(tmp_path):
    result = fine_tune(tmp_path / "nowhere", "--output", tmp_path / "out.keras")
    assert_clean_error(result, "does not exist")


@pytest.mark.parametrize(
    "options, message",
    [
        (["--image-size", "64"], "--image-size must be an integer from 71 to 2048"),
        (["--image-size", "2049"], "--image-size must be an integer from 71 to 2048"),
        (["--learning-rate", "inf"], "--learning-rate must be a finite number above 0"),
        (["--learning-rate", "nan"], "--learning-rate must be a finite number above 0"),
        (["--fine-tune-learning-rate", "inf"],
         "--fine-tune-learning-rate must be a finite number above 0"),
        (["--fine-tune-learning-rate", "nan"],
         "--fine-tune-learning-rate must be a finite number above 0"),
        (["--dropout", "nan"], "--dropout must be in [0, 1)"),
        (["--dropout", "inf"], "--dropout must be in [0, 1)"),
        (["--unfreeze-from", "block99"], "Valid blocks: block1, block2"),
        (["--val-split", "1.5"], "--val-split must be in [0, 1)"),
        (["--workers", "2"], "--workers only applies with --strategy multiworker"),
        (["--strategy", "multiworker"], "needs TF_CONFIG"),
        (["--weights", "missing.h5"], "existing weights file"),
        (["--epochs", "0", "--fine-tune-epochs", "0"], "Nothing to train"),
        (["--seed", "-1"], "--seed must be an integer from 0 to 4294967295"),
        (["--seed", "4294967296"], "--seed must be an integer from 0 to 4294967295"),
        (
            ["--strategy", "multiworker", "--workers", "2", "--batch-size", "3"],
            "--batch-size must be a multiple of --workers",
        ),
    ],
)
def test_bad_options_are_clear_errors(tmp_path, options, message):
    data = make_dataset(tmp_path / "data", per_class=1)
    result = fine_tune(data, "--output", tmp_path / "out.keras", *options)
    assert_clean_error(result, message)


def test_output_must_be_a_keras_file(tmp_path):
    result = fine_tune(tmp_path, "--output", tmp_path / "out.h5")
    assert_clean_error(result, "--output must name a .keras file")


def test_interrupted_run_needs_resume_or_overwrite(tmp_path):
    data = make_dataset(tmp_path / "data", per_class=1)
    work = tmp_path / "out.training"
    work.mkdir()
    (work / "checkpoint-1-0001.npz").write_bytes(b"state")
    result = fine_tune(data, "--output", tmp_path / "out.keras", "--weights", "none")
    assert_clean_error(result, "interrupted training run", "--resume", "--overwrite")
    assert (work / "checkpoint-1-0001.npz").read_bytes() == b"state"


def test_resume_with_nothing_to_resume_is_an_error(tmp_path):
    data = make_dataset(tmp_path / "data", per_class=1)
    result = fine_tune(data, "--output", tmp_path / "out.keras", "--weights", "none", "--resume")
    assert_clean_error(result, "Nothing to resume", "out.training")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]


def test_existing_output_is_kept_without_overwrite(tmp_path):
    data = make_dataset(tmp_path / "data", per_class=1)
    out = tmp_path / "out.keras"
    out.write_bytes(b"an earlier model")
    result = fine_tune(data, "--output", out, "--weights", "none")
    assert_clean_error(result, "already exists", "--overwrite")
    assert out.read_bytes() == b"an earlier model"


def test_output_path_is_checked_before_any_image(tmp_path):
    data = make_dataset(tmp_path / "data", per_class=1)
    (data / "cat" / "broken.jpg").write_bytes(b"not an image")
    (tmp_path / "file").write_text("a file where a folder should be")
    result = fine_tune(data, "--output", tmp_path / "file" / "out.keras", "--weights", "none")
    assert_clean_error(result, "is a file, not a folder")
    assert "broken.jpg" not in result.stderr


@pytest.mark.slow
def test_the_same_seed_repeats_the_run_bit_for_bit_and_another_seed_does_not(tmp_path):
    """`--seed` covers every random draw of a run (the split, the shuffling,
    the new layers' initial weights, dropout, augmentation): on the same
    machine the same command saves the same model. The caller's generators
    are left as they were."""
    import random

    data = make_dataset(tmp_path / "data", per_class=3)

    def draws():
        return random.random(), np.random.random(), float(keras.random.uniform(()))

    keras.utils.set_random_seed(11)
    callers = draws()
    keras.utils.set_random_seed(11)

    def weights(name, seed):
        out = tmp_path / f"{name}.keras"
        done = commandline.main("fine-tune", data, "--output", out, "--weights", "none",
                                "--image-size", 71, "--batch-size", 3, "--epochs", 1,
                                "--fine-tune-epochs", 0, "--val-split", 0, "--seed", seed)
        assert done.returncode == 0, done.stderr
        return out

    saved = [weights("first", 3), weights("again", 3), weights("other", 4)]
    assert draws() == callers  # (Loading a model draws seeds for its initializers.)
    first, again, other = (keras.saving.load_model(path).get_weights() for path in saved)
    assert len(first) == len(again) == len(other)
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    assert not all(np.array_equal(a, b) for a, b in zip(first, other))


@pytest.mark.slow
def test_fine_tune_run_saves_a_raw_input_model_with_class_names(
    tmp_path, imagenet_notop_files
):
    data = make_dataset(tmp_path / "data", classes=("cat", "dog", "fox"), per_class=4)
    out = tmp_path / "models" / "pets.keras"
    result = cli(
        data,
        "--output",
        out,
        "--weights",
        imagenet_notop_files["keras3"],
        "--image-size",
        71,
        "--batch-size",
        6,
        "--epochs",
        1,
        "--fine-tune-epochs",
        1,
        "--unfreeze-from",
        "block14",
        "--val-split",
        0.25,
        "--strategy",
        "mirrored",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    # The result on stdout, one line; progress on stderr.
    assert result.stdout.startswith(f"saved {out} (3 classes: cat, dog, fox; 2 epochs;")
    assert len(result.stdout.splitlines()) == 1, result.stdout
    err_lines = result.stderr.splitlines()
    assert any(
        "12 images in 3 classes (cat 4, dog 4, fox 4)" in line for line in err_lines
    )
    assert any(
        line.startswith("phase 1/2 (head), epoch 1/1:") and "val_accuracy" in line
        for line in err_lines
    ), result.stderr
    assert any(
        line.startswith("phase 2/2 (fine-tune), epoch 1/1:") for line in err_lines
    ), result.stderr
    assert sorted(p.name for p in out.parent.iterdir()) == [
        "pets.keras",
        "pets.training",
    ]
    # Checkpoints removed, the best epoch's weights kept on purpose.
    assert sorted(p.name for p in (out.parent / "pets.training").iterdir()) == [
        "best.weights.h5"
    ]

    with zipfile.ZipFile(out) as archive:
        metadata = json.loads(archive.read("metadata.json"))
    assert metadata["class_names"] == ["cat", "dog", "fox"]
    assert metadata["training"]["history"]["phase"] == ["head", "fine-tune"]
    model = keras.saving.load_model(out)  # no custom_objects
    assert model.input_shape == (None, 71, 71, 3)
    assert model.get_layer("preprocess").get_config()["scale"] == pytest.approx(
        1 / 127.5
    )
    image = np.asarray(
        Image.open(data / "dog" / "dog0.png").resize((71, 71)), "float32"
    )
    probabilities = model.predict(image[None], verbose=0)
    assert probabilities.shape == (1, 3)
    assert probabilities.sum() == pytest.approx(1.0, abs=1e-4)
