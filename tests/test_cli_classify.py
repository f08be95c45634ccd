"""`keras-xception classify`: in this process, and in a real one where only it shows.

The results and errors are driven through `keras_xception.cli.main`
(conftest's `run_cli`); a subprocess is kept for a closed stdout, TensorFlow's
graph optimizer with the oneDNN the command turns on, and a missing-weights
error that must come before TensorFlow starts logging.
"""

import functools
import http.server
import json
import os
import pathlib
import shutil
import subprocess
import sys
import threading

import numpy as np
import pytest

from tests import commandline
from tests.realweights import pillow_pixels


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


@pytest.mark.slow
def test_json_for_a_folder(run_cli, folder, imagenet_top_weights):
    # float32, to compare with the float32 reference below; the default
    # precision (auto: bf16 where the CPU runs it natively) is tested in
    # test_precision.py.
    status, out, err = run_cli("classify", folder, "--weights", imagenet_top_weights,
                               "--json", "--top", "3", "--batch-size", "2",
                               "--precision", "float32")
    assert status == 0, err
    results = json.loads(out)
    assert [r["path"] for r in results] == [
        str(folder / "a.jpg"), str(folder / "b.jpg"), str(folder / "sub" / "c.JPG")
    ]  # notes.txt is not an image: not read
    for result in results:
        predictions = result["predictions"]
        assert [sorted(p) for p in predictions] == [
            ["class_index", "label", "score", "synset"]] * 3
        assert result["score_rule"] == "the model's softmax"
        scores = [p["score"] for p in predictions]
        assert scores == sorted(scores, reverse=True) and 0 < scores[0] <= 1
        assert all(p["synset"].startswith("n") for p in predictions)

    # An independent reference: keras.applications.Xception with the same
    # weights, on pixels decoded and resized by Pillow here and scaled to
    # [-1, 1] as Xception expects. Pillow's plain resize differs slightly
    # from the package's antialiased one, hence the tolerance; the pixels
    # scaled twice, or not at all, are checked to miss it.
    import keras

    reference = keras.applications.Xception(weights=str(imagenet_top_weights))
    pixels = pillow_pixels([r["path"] for r in results], 299)
    probs = reference.predict(pixels / 127.5 - 1, verbose=0)
    wrong = [reference.predict(x, verbose=0)
             for x in ((pixels / 127.5 - 1) / 127.5 - 1, pixels)]
    atol = 0.03
    for i, result in enumerate(results):
        classes = [p["class_index"] for p in result["predictions"]]
        got = np.array([p["score"] for p in result["predictions"]])
        assert classes[0] == int(np.argmax(probs[i]))
        np.testing.assert_allclose(got, probs[i][classes], atol=atol)
        for other in wrong:
            assert np.abs(got - other[i][classes]).max() > atol
        # The synset and label belong to the class index.
        assert len({(p["class_index"], p["synset"], p["label"])
                    for p in result["predictions"]}) == 3


def test_bad_and_missing_files_are_named_and_the_rest_classified(
    run_cli, folder, kitchen_photos, imagenet_top_weights, tmp_path
):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"this is text, not a JPEG")
    missing = tmp_path / "missing.jpg"
    # A name that is not valid UTF-8: shown with its byte escaped, no crash.
    odd = os.path.join(os.fsencode(tmp_path), b"caf\xe9.jpg")
    shutil.copyfile(kitchen_photos[4], odd)
    status, out, err = run_cli("classify", kitchen_photos[3], broken, missing,
                               folder / "a.jpg", os.fsdecode(odd),
                               "--weights", imagenet_top_weights, "--top", "2")
    assert status == 1
    assert "Traceback" not in err
    assert str(broken) in err and str(missing) in err
    # The readable table names the good photos, with two predictions each.
    assert str(kitchen_photos[3]) in out and str(folder / "a.jpg") in out
    assert str(tmp_path / "caf\\xe9.jpg") in out.splitlines()
    assert str(broken) not in out
    assert sum(line.strip().startswith(("1.", "2.")) for line in out.splitlines()) == 6


def test_offline_without_cached_weights_says_what_to_do(folder, keras_home):
    # A real process: the message must come before TensorFlow is imported
    # and starts logging, which only a fresh process shows.
    done = classify(folder / "a.jpg", env=dict(os.environ))
    assert done.returncode == 1
    # Only the weights module's message (where the file goes): the weights
    # are looked for before TensorFlow is imported and starts logging.
    assert done.stderr.startswith("error: ") and done.stderr.count("\n") == 1
    assert str(keras_home) in done.stderr
    assert done.stdout == ""


def test_missing_weights_file_is_named(run_cli, folder, tmp_path):
    status, out, err = run_cli("classify", folder / "a.jpg",
                               "--weights", tmp_path / "nope.h5")
    assert status == 1
    assert err.startswith("error: Weights file not found: ")
    assert str(tmp_path / "nope.h5") in err
    assert "Traceback" not in err and out == ""


# --- every kind of input, streaming output, closed pipes -------------------------


def _rotated_photo(path):
    """Left half white, stored landscape with EXIF "rotate 90 clockwise"."""
    from PIL import Image

    image = Image.new("RGB", (80, 40), (0, 0, 0))
    image.paste((255, 255, 255), (0, 0, 40, 40))
    exif = Image.Exif()
    exif[0x0112] = 6
    image.save(path, exif=exif.tobytes(), quality=95)


@pytest.fixture(scope="module")
def mixed(kitchen_photos, tmp_path_factory):
    """A folder of every kind of image file, readable or not, and other paths."""
    from PIL import Image

    root = tmp_path_factory.mktemp("mixed")
    good = root / "good"
    good.mkdir()
    shutil.copy(kitchen_photos[0], good / "a_photo.jpg")
    Image.fromarray(np.full((30, 40), 40000, np.uint16)).save(good / "b_16bit.png")
    palette = Image.new("P", (30, 40), 0)
    palette.putpalette([0, 0, 0, 200, 40, 40] + [0] * 762)
    palette.paste(1, (0, 0, 15, 40))
    palette.save(good / "c_palette.png", transparency=0)
    Image.new("L", (30, 40), 128).save(good / "d_gray.jpg")
    Image.new("CMYK", (30, 40), (0, 200, 200, 0)).save(good / "e_cmyk.jpg")
    _rotated_photo(good / "f_rotated.jpg")
    # A name that is not valid UTF-8 (Latin-1 "f_e\xe9.jpg").
    shutil.copyfile(kitchen_photos[5], os.path.join(os.fsencode(good), b"f_\xe9.jpg"))
    Image.new("RGB", (1000, 1000), (9, 9, 9)).save(good / "g_huge.png")  # over --max-pixels
    (good / "h_empty.jpg").write_bytes(b"")
    truncated = (good / "a_photo.jpg").read_bytes()
    (good / "i_truncated.jpg").write_bytes(truncated[: len(truncated) // 2])
    (good / "j_text.jpg").write_text("a text file with an image's name\n")
    (good / "k_dangling.jpg").symlink_to(root / "nothing.jpg")
    (good / "l_loop").symlink_to(good)
    (good / ".hidden.jpg").write_text("never read")
    (good / "._a_photo.jpg").write_text("macOS metadata, never read")
    (root / "empty").mkdir()
    (root / "empty" / ".DS_Store").write_text("hidden")
    return root


def test_every_kind_of_input_in_one_run(run_cli, mixed, imagenet_top_weights):
    good = mixed / "good"
    status, out, err = run_cli("classify", good, mixed / "empty", mixed / "missing.jpg",
                               f"{good / 'a_photo.jpg'}/", "--weights",
                               imagenet_top_weights, "--json", "--top", "1",
                               "--max-pixels", "800000")
    assert status == 1
    # stdout is results only: it parses, and lists exactly the readable images.
    results = json.loads(out)
    assert [os.fsencode(pathlib.Path(r["path"]).name) for r in results] == [
        b"a_photo.jpg", b"b_16bit.png", b"c_palette.png", b"d_gray.jpg", b"e_cmyk.jpg",
        b"f_rotated.jpg", b"f_\xe9.jpg",
    ]
    # Each problem is one line on stderr naming its path; no traceback.
    assert "Traceback" not in err
    lines = err.splitlines()
    expected = {
        "g_huge.png": "1000x1000", "h_empty.jpg": "empty",
        "i_truncated.jpg": "truncated", "j_text.jpg": "not an image",
        "k_dangling.jpg": "does not exist", "l_loop": "loops back",
        str(mixed / "empty"): "no images found in",
        "missing.jpg": "No such file", "a_photo.jpg/": "not a folder",
    }
    for name, what in expected.items():
        assert [line for line in lines if name in line and what in line], (name, lines)
    # One line per problem, and nothing else: `wc -l` counts the failures.
    assert len(lines) == len(expected), lines
    assert "hidden" not in err and "._a_photo" not in err


@pytest.mark.slow
@pytest.mark.parametrize("output", ["--jsonl", "--top=1"])
def test_a_closed_stdout_ends_quietly(folder, imagenet_top_weights, output):
    """`classify DIR --jsonl | head -n 1`: the reader goes, classify stops quietly.

    A real process, which also shows TensorFlow's own stderr: the command
    turns oneDNN on, and its graph optimizer must not fail on this model in
    float32.
    """
    read_end, write_end = os.pipe()
    os.close(read_end)  # A reader that has already gone: every write fails.
    try:
        done = subprocess.run(
            [sys.executable, "-m", "keras_xception.cli", "classify", str(folder),
             output, "--weights", str(imagenet_top_weights), "--batch-size", "1",
             "--precision", "float32"],
            stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=300,
        )
    finally:
        os.close(write_end)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr and "BrokenPipe" not in done.stderr
    assert "remapper failed" not in done.stderr


@pytest.mark.slow
def test_jsonl_streams_results_and_a_download_stays_off_stdout(
        run_cli, mixed, imagenet_top_weights, tmp_path, monkeypatch):
    """One JSON object per image, even while the weights are downloaded."""
    top_weights = imagenet_top_weights
    handler = functools.partial(_QuietHandler, directory=str(top_weights.parent))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    good = mixed / "good"
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/{top_weights.name}"
        monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
        monkeypatch.delenv("KERAS_XCEPTION_OFFLINE", raising=False)
        status, out, err = run_cli("classify", good / "a_photo.jpg",
                                   good / "f_rotated.jpg", "--jsonl", "--weights", url,
                                   "--batch-size", "500")
    finally:
        server.shutdown()
        server.server_close()
    assert status == 0, err
    records = [json.loads(line) for line in out.splitlines()]
    assert [r["path"] for r in records] == [str(good / "a_photo.jpg"),
                                           str(good / "f_rotated.jpg")]
    assert all(len(r["predictions"]) == 5 for r in records)
    # An over-large batch is lowered, and the user told so on stderr.
    assert "--batch-size 500 is more than 32" in err


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.mark.parametrize("args, what", [
    (["--top", "0"], "--top"),
    (["--top", "1001"], "--top"),
    (["--top", "-2"], "--top"),
    (["--batch-size", "0"], "--batch-size"),
    (["--batch-size", "-8"], "--batch-size"),
    (["--batch-size", "many"], "--batch-size"),
    (["--max-pixels", "0"], "--max-pixels"),
    (["--json", "--jsonl"], "--jsonl"),
])
def test_bad_arguments_are_one_line_and_exit_1(run_cli, folder, args, what):
    status, out, err = run_cli("classify", folder / "a.jpg", *args)
    assert status == 1
    assert err.startswith("error: ") and err.count("\n") == 1
    assert what in err and out == ""


def test_a_bad_pixel_limit_in_the_environment_is_named(run_cli, folder, monkeypatch):
    monkeypatch.setenv("KERAS_XCEPTION_MAX_PIXELS", "huge")
    status, out, err = run_cli("classify", folder / "a.jpg")
    assert status == 1 and out == ""
    assert err == ("error: KERAS_XCEPTION_MAX_PIXELS must be a positive whole "
                           "number of pixels. Received: KERAS_XCEPTION_MAX_PIXELS='huge'\n")


def test_a_folder_without_images_is_named(run_cli, tmp_path):
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / ".DS_Store").write_text("hidden")
    status, out, err = run_cli("classify", tmp_path)
    assert status == 1 and out == ""
    assert err.startswith(f"error: no images found in {str(tmp_path)!r}")
    assert "Traceback" not in err


def test_weights_that_are_not_weights_or_lack_the_top_are_one_line(
    run_cli, folder, imagenet_notop_files, tmp_path
):
    text = tmp_path / "weights.h5"
    text.write_text("not weights")
    for weights in [text, imagenet_notop_files["keras3"]]:
        status, out, err = run_cli("classify", folder / "a.jpg", "--weights", weights)
        assert status == 1 and out == ""
        assert err.startswith("error: ") and err.count("\n") == 1
        assert str(weights) in err
