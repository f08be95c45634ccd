"""`keras-xception explain` through `keras_xception.cli.main`, in this process."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image, ImageOps

from keras_xception import fileio, overlay, preprocess_input
from keras_xception.explain import explain_batch
from keras_xception.images import decode
from tests import realweights


@pytest.fixture(scope="module")
def photos(kitchen_photos, tmp_path_factory):
    """Two folders with a photo of the same name, a subfolder and a bad file."""
    root = tmp_path_factory.mktemp("photos")
    (root / "a" / "sub").mkdir(parents=True)
    (root / "b").mkdir()
    shutil.copy(kitchen_photos[0], root / "a" / "x.jpg")
    shutil.copy(kitchen_photos[1], root / "a" / "sub" / "y.jpg")
    shutil.copy(kitchen_photos[2], root / "b" / "x.jpg")
    (root / "b" / "broken.jpg").write_bytes(b"not a jpeg")
    return root


def png(path):
    with Image.open(path) as image:
        assert image.format == "PNG" and image.mode == "RGB"
        return np.asarray(image)


@pytest.mark.slow
def test_fine_tuned_model(run_cli, kitchen_model, photos, tmp_path):
    """The kitchenware `.keras` model (a nested base, pixels scaled outside
    the model): one PNG per photo at its size, named after it, the same
    picture as the Python API draws; a bad file named, the others done."""
    model_file = realweights.package_root() / realweights.MODEL_FILE
    out = tmp_path / "out"
    # What a run killed between a PNG's write and its rename left (SIGKILL,
    # SIGTERM): this run removes it, in every folder it writes to.
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                           capture_output=True, text=True, check=True)
    machine = fileio._owner().rsplit("-", 1)[0]
    left = [out / f".x.png.{machine}-{int(ended.stdout)}.a1b2c3d4.tmp",
            out / "sub" / f".y.png.{machine}-{int(ended.stdout)}.e5f6g7h8.tmp"]
    for path in left:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"half a PNG")
    status, stdout, stderr = run_cli("explain", photos / "a", photos / "b",
                                     "--model", model_file, "--output", out, "--json")
    assert status == 1
    errors = stderr.strip().splitlines()
    assert len(errors) == 1 and "broken.jpg" in errors[0], stderr
    results = json.loads(stdout)
    sources = [photos / "a" / "sub" / "y.jpg", photos / "a" / "x.jpg", photos / "b" / "x.jpg"]
    assert [r["path"] for r in results] == list(map(str, sources))
    assert [r["overlay"] for r in results] == [
        str(out / "sub" / "y.png"), str(out / "x.png"), str(out / "x-2.png")]

    # The reference's pixels come from Pillow here, reduced as documented.
    x = preprocess_input(realweights.pillow_pixels(sources, 150, draft=True))
    expected = explain_batch(kitchen_model, x)
    probabilities = np.exp(expected.logits) / np.exp(expected.logits).sum(-1, keepdims=True)
    for i, (result, source) in enumerate(zip(results, sources)):
        assert result["class_index"] == expected.class_indices[i]
        assert result["class"] is None  # The file saves no class names.
        assert result["score"] == pytest.approx(
            probabilities[i, expected.class_indices[i]], abs=1e-4)
        with Image.open(source) as image:  # upright, at its own size
            photo = np.asarray(ImageOps.exif_transpose(image).convert("RGB"))
        picture = png(result["overlay"])
        assert picture.shape == photo.shape
        want = overlay(photo, expected.heatmaps[i])
        assert np.abs(picture.astype(int) - want).max() <= 1
    assert not list(out.rglob(".*"))  # No temporary files left.


def test_imagenet_model_top_classes(run_cli, kitchen_photos, imagenet_top_weights,
                                    tmp_path):
    """`--weights` (as classify) and `--top 2`: two PNGs per photo, the
    ImageNet labels, scores in order; `--jsonl` lines parse."""
    out = tmp_path / "out"
    status, stdout, stderr = run_cli("explain", kitchen_photos[3], "--weights",
                                     imagenet_top_weights, "--output", out,
                                     "--top", "2", "--jsonl")
    assert status == 0, stderr
    results = [json.loads(line) for line in stdout.splitlines()]
    stem = kitchen_photos[3].stem
    assert [r["overlay"] for r in results] == [
        str(out / f"{stem}.top1.png"), str(out / f"{stem}.top2.png")]
    assert results[0]["score"] >= results[1]["score"] > 0
    assert results[0]["class_index"] != results[1]["class_index"]
    from keras_xception.preprocessing import imagenet_classes

    for result in results:
        assert result["class"] == imagenet_classes()[result["class_index"]][1]
        assert png(result["overlay"]).shape == decode(kitchen_photos[3], None).shape
    assert not np.array_equal(png(results[0]["overlay"]), png(results[1]["overlay"]))


@pytest.mark.parametrize("args, message", [
    (["--output", "{file}"], "--output must be a folder"),
    (["--output", "{dir}", "--alpha", "2"], "argument --alpha: must be a number from 0 to 1"),
    (["--output", "{dir}", "--top", "2", "--class", "3"], "not allowed with argument"),
    (["--output", "{dir}", "--model", "{file}"], "is not a readable .keras model file"),
])
def test_bad_arguments_are_one_line_before_any_work(run_cli, kitchen_photos, tmp_path,
                                                    args, message):
    afile = tmp_path / "file.keras"
    afile.write_text("text")
    args = [a.format(file=afile, dir=tmp_path / "out") for a in args]
    status, stdout, stderr = run_cli("explain", kitchen_photos[0], *args)
    assert status == 1
    assert stderr.count("\n") == 1 and message in stderr, stderr
    assert stdout == ""
    assert not (tmp_path / "out").exists()


def test_class_names_indexes_and_synsets_resolve():
    from keras_xception.errors import ConfigError
    from keras_xception.pipelines import resolve_class
    from keras_xception.preprocessing import imagenet_classes
    from keras_xception.source import Source

    def src(classes, names, synsets):
        return Source("m", "keras", "/m", "0", True, classes, names, synsets, (299, 299))

    synsets = tuple(s for s, _ in imagenet_classes())
    labels = tuple(label for _, label in imagenet_classes())
    imagenet = src(1000, labels, synsets)
    assert resolve_class("281", imagenet) == 281
    assert resolve_class("tabby", imagenet) == 281
    assert resolve_class("n02123045", imagenet) == 281
    assert resolve_class("Egyptian_Cat", imagenet) == labels.index("Egyptian_cat")
    with pytest.raises(ConfigError, match=r"'crane' names 2 classes \(134, 517\)"):
        resolve_class("crane", imagenet)
    with pytest.raises(ConfigError, match=r"from 0 to 999.*'1000'"):
        resolve_class("1000", imagenet)
    with pytest.raises(ConfigError, match=r"no class names saved.*from 0 to 5.*'cup'"):
        resolve_class("cup", src(6, None, None))
    assert resolve_class("spoon", src(3, ("cup", "fork", "spoon"), None)) == 2
    # Classes named by numbers: a number that is another class's name is
    # refused; `#N` is always the index N.
    numbered = src(3, ("1", "10", "2"), None)
    with pytest.raises(ConfigError, match=r"'1' is both the index of class '10' and "
                                          r"the name of class 0; give '#1'.*'#0'"):
        resolve_class("1", numbered)
    assert [resolve_class(t, numbered) for t in ("#1", "#0", "2", "10")] == [1, 0, 2, 1]
    with pytest.raises(ConfigError, match=r"from 0 to 2\. Received: --class '#10'"):
        resolve_class("#10", numbered)
    with pytest.raises(ConfigError, match=r"give '%231' for the first or '%230'"):
        resolve_class("1", numbered, option="class")  # serve: '#' in a URL is %23
    # Names that start with '#', or look like numbers but are not: names.
    assert resolve_class("#foo", src(3, ("#foo", "b", "c"), None)) == 0
    assert resolve_class("-1", src(3, ("-1", "a", "b"), None)) == 0
    with pytest.raises(ConfigError, match=r"'#1' is both the index of class '#2' and "
                                          r"the name of class 0; give 1 .* or 0"):
        resolve_class("#1", src(3, ("#1", "#2", "#3"), None))
    for text in ("--1", "\u00b2", "#"):  # not numbers: no int() of them
        with pytest.raises(ConfigError, match="is not a class of this model"):
            resolve_class(text, numbered)


def test_png_names_never_collide(tmp_path):
    """Names follow the photo's path below a folder argument; a name taken
    already (ignoring case, for case-insensitive file systems) gets -2, -3."""
    from keras_xception.pipelines import find_jobs, png_name

    for name in ("a/X.jpg", "a/x.png", "a/sub/x.jpg", "b/x.jpg", "b/x-2.jpg"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    jobs = find_jobs([tmp_path / "a", tmp_path / "b", tmp_path / "b" / "x.jpg"],
                     on_error=pytest.fail)
    names = [str(png_name(job, 1, 1)) for job in jobs]
    # a/X.jpg, a/sub/x.jpg, a/x.png, b/x-2.jpg, b/x.jpg, b/x.jpg again:
    assert names == ["X.png", "sub/x.png", "x-2.png", "x-2-2.png", "x-3.png", "x-4.png"]
    assert [str(png_name(jobs[0], r, 2)) for r in (1, 2)] == ["X.top1.png", "X.top2.png"]
