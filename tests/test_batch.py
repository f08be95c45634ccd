"""`keras-xception embed` and batch classify on the local engine (no Ray).

The contract: results are one Parquet dataset (`pyarrow.dataset.dataset`),
unreadable inputs are in `_errors.parquet` and make the exit status 1, the
embeddings are those of `Xception(include_top=False, pooling="avg")` on the
same decoded, preprocessed pixels (float32 kernels may sum in another
order: 1e-5 on values up to about 2), a rerun skips finished shards, a run
killed with SIGKILL and run again has every readable input exactly once,
and another model's results are not mixed in without --overwrite.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pyarrow.dataset as pds
import pyarrow.parquet as pq
import pytest

from tests import commandline

PHOTOS = 4


def onednn_env():
    """The subprocess runs TensorFlow's kernels as this process does."""
    from keras_xception.inference import onednn_enabled

    env = dict(os.environ)
    state = onednn_enabled()
    if state is not None:
        env["TF_ENABLE_ONEDNN_OPTS"] = "1" if state else "0"
    return env


def read_results(folder):
    table = pds.dataset(folder, format="parquet").to_table()
    return table.sort_by("path")


def embeddings(table):
    return np.stack(table["embedding"].to_numpy(zero_copy_only=False)).astype(np.float32)


@pytest.fixture(scope="module")
def folder(kitchen_photos, tmp_path_factory):
    root = tmp_path_factory.mktemp("photos")
    for photo in kitchen_photos[:PHOTOS]:
        shutil.copy(photo, root / photo.name)
    # A JPEG cut in half: its header reads, its data does not.
    data = kitchen_photos[PHOTOS].read_bytes()
    (root / "truncated.jpg").write_bytes(data[: len(data) // 2])
    return root


@pytest.fixture(scope="module")
def embedded(folder, imagenet_notop_files, tmp_path_factory):
    output = tmp_path_factory.mktemp("embed") / "out"
    done = commandline.run("embed", folder, "--output", output, "--weights",
                           imagenet_notop_files["keras3"], "--shard-size", "2",
                           "--engine", "local", "--json", env=onednn_env())
    return output, done


def test_embed_writes_one_parquet_dataset_and_records_the_broken_image(embedded, folder):
    output, done = embedded
    assert done.returncode == 1, done.stderr
    manifest = json.loads(done.stdout)  # stdout is only the manifest
    assert manifest["counts"] == {"inputs": PHOTOS + 1, "images": PHOTOS,
                                  "errors": 1, "shards": 3}
    assert json.loads((output / "_manifest.json").read_text()) == manifest
    table = read_results(output)
    assert table.schema.field("path").type == "string"
    assert str(table.schema.field("embedding").type) == \
        "fixed_size_list<element: float>[2048]"
    expected = sorted(str(p) for p in folder.glob("*.jpg") if p.name != "truncated.jpg")
    assert table["path"].to_pylist() == expected
    errors = pq.read_table(output / "_errors.parquet").to_pylist()
    assert [e["path"] for e in errors] == [str(folder / "truncated.jpg")]
    assert "truncated" in errors[0]["reason"]
    assert "truncated.jpg" in done.stderr
    assert not [p for p in output.iterdir() if p.name.startswith(".")]


@pytest.mark.numerics
def test_embeddings_equal_the_library_on_the_same_pixels(embedded, imagenet_notop_files):
    from keras_xception import Xception, preprocess_input
    from keras_xception.images import decode

    table = read_results(embedded[0])
    pixels = np.stack([decode(p, (299, 299)) for p in table["path"].to_pylist()])
    model = Xception(include_top=False, pooling="avg",
                     weights=str(imagenet_notop_files["keras3"]))
    expected = model.predict(preprocess_input(pixels), verbose=0)
    np.testing.assert_allclose(embeddings(table), expected, rtol=0, atol=1e-5)


def test_a_rerun_skips_finished_shards(embedded, folder, imagenet_notop_files):
    output, _ = embedded
    before = {p.name: p.stat().st_mtime_ns for p in output.glob("part-*.parquet")}
    done = commandline.run("embed", folder, "--output", output, "--weights",
                           imagenet_notop_files["keras3"], "--shard-size", "2",
                           "--engine", "local")
    assert done.returncode == 1, done.stderr  # the broken image is still broken
    after = {p.name: p.stat().st_mtime_ns for p in output.glob("part-*.parquet")}
    assert after == before
    assert read_results(output).num_rows == PHOTOS


def test_another_model_is_refused_without_overwrite(embedded, folder, imagenet_notop_files):
    output, _ = embedded
    before = sorted(p.name for p in output.iterdir())
    done = commandline.run("embed", folder, "--output", output, "--weights",
                           imagenet_notop_files["legacy"], "--shard-size", "2")
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "another model" in lines[0] and "--overwrite" in lines[0]
    assert sorted(p.name for p in output.iterdir()) == before


@pytest.fixture(scope="module")
def small_classifier(tmp_path_factory):
    """A 2-class classifier on 71x71 images (random weights): a fast model."""
    import keras

    from keras_xception.training.classifier import build_classifier
    from keras_xception.training.saving import save_classifier

    keras.utils.set_random_seed(1)
    model = build_classifier(2, image_size=71, weights=None, augment=False,
                             class_names=("cup", "fork"))
    path = tmp_path_factory.mktemp("model") / "kitchen.keras"
    save_classifier(model, path)
    return path


def test_classify_writes_top_k_lists_with_the_model_class_names(
        small_classifier, folder, tmp_path):
    from keras_xception import batch
    from keras_xception.images import decode
    from keras_xception.training.saving import load_classifier

    manifest = batch.run("classify", [folder], tmp_path / "out", engine="local",
                         model_path=small_classifier, top=2)
    assert manifest["counts"]["errors"] == 1
    table = read_results(tmp_path / "out")
    assert table.column_names == ["path", "class_index", "class_name", "score"]
    model = load_classifier(small_classifier)
    pixels = np.stack([decode(p, (71, 71)) for p in table["path"].to_pylist()])
    probs = model.predict(pixels, verbose=0)
    for row, p in zip(table.to_pylist(), probs):
        order = [int(i) for i in np.argsort(-p, kind="stable")]
        assert row["class_index"] == order
        assert row["class_name"] == [("cup", "fork")[i] for i in order]
        np.testing.assert_allclose(row["score"], p[order], rtol=0, atol=1e-5)


def test_a_list_of_paths_in_csv_and_txt(small_classifier, kitchen_photos, tmp_path):
    from keras_xception import batch

    lists = tmp_path / "lists"
    lists.mkdir()
    shutil.copy(kitchen_photos[0], lists / "a.jpg")
    (lists / "paths.csv").write_text(f"file,label\na.jpg,cup\n{kitchen_photos[1]},fork\n"
                                     "missing.jpg,cup\n")
    (lists / "more.txt").write_text(f"{kitchen_photos[2]}\n\n")
    errors = []
    manifest = batch.run("embed", [lists / "paths.csv", lists / "more.txt"],
                         tmp_path / "out", engine="local", model_path=small_classifier,
                         path_column="file", on_error=lambda p, m: errors.append(p))
    table = read_results(tmp_path / "out")
    assert sorted(table["path"].to_pylist()) == sorted(
        [str(lists / "a.jpg"), str(kitchen_photos[1]), str(kitchen_photos[2])])
    assert manifest["counts"]["errors"] == 1
    assert pq.read_table(tmp_path / "out" / "_errors.parquet")["path"].to_pylist() == [
        str(lists / "missing.jpg")]
    assert embeddings(table).shape == (3, 2048)


def test_a_csv_without_the_path_column_is_one_line(tmp_path):
    (tmp_path / "list.csv").write_text("file\na.jpg\n")
    done = commandline.run("embed", tmp_path / "list.csv", "--output", tmp_path / "out")
    assert done.returncode == 1
    assert done.stderr.strip().count("\n") == 0
    assert "no column 'path'" in done.stderr and "--path-column" in done.stderr


def test_killed_then_rerun_has_each_input_exactly_once(small_classifier, kitchen_photos,
                                                       tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    photos = kitchen_photos[:8]
    for photo in photos:
        shutil.copy(photo, folder / photo.name)
    output = tmp_path / "out"
    args = [sys.executable, "-m", "keras_xception.cli", "embed", str(folder),
            "--output", str(output), "--model", str(small_classifier),
            "--shard-size", "1", "--batch-size", "1", "--engine", "local"]
    job = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 240
        while not list(output.glob("part-*.parquet")) and time.monotonic() < deadline:
            if job.poll() is not None:
                break
            time.sleep(0.05)
        job.send_signal(signal.SIGKILL)
    finally:
        job.wait(timeout=60)
    written = len(list(output.glob("part-*.parquet")))
    assert 1 <= written < len(photos), "the job was not killed in the middle"
    assert not (output / "_manifest.json").exists()
    done = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    paths = read_results(output)["path"].to_pylist()
    assert sorted(paths) == sorted(str(folder / p.name) for p in photos)
    assert (output / "_manifest.json").exists()
    assert not [p for p in output.rglob(".*")]


def test_overwrite_replaces_another_models_results(embedded, small_classifier, folder,
                                                   tmp_path):
    output = tmp_path / "out"
    shutil.copytree(embedded[0], output)
    old = {p.name for p in output.glob("part-*.parquet")}
    done = commandline.run("embed", folder, "--output", output, "--model", small_classifier,
                           "--shard-size", "3", "--engine", "local", "--overwrite", "--json",
                           env=onednn_env())
    assert done.returncode == 1, done.stderr  # the broken image is still broken
    manifest = json.loads(done.stdout)
    assert manifest["model_path"] == str(small_classifier)
    assert manifest["counts"] == {"inputs": PHOTOS + 1, "images": PHOTOS,
                                  "errors": 1, "shards": 2}
    new = {p.name for p in output.glob("part-*.parquet")}
    assert len(new) == 2 and not new & old  # the other model's shards are gone
    table = read_results(output)
    assert table.num_rows == PHOTOS  # each image once, from the new model only
    from keras_xception import batch

    batch.run("embed", [folder], tmp_path / "fresh", engine="local",
              model_path=small_classifier, shard_size=3)
    fresh = read_results(tmp_path / "fresh")
    assert table["path"].to_pylist() == fresh["path"].to_pylist()
    np.testing.assert_allclose(embeddings(table), embeddings(fresh), rtol=0, atol=1e-5)


@pytest.mark.numerics
def test_classify_with_imagenet_top_weights_names_imagenet_classes(
        folder, imagenet_notop_arrays, tmp_path):
    from keras_xception import Xception, decode_predictions, preprocess_input
    from keras_xception.images import decode
    from tests.test_cli_classify import write_top_weights

    weights = tmp_path / "xception_top.weights.h5"
    write_top_weights(weights, imagenet_notop_arrays)
    output = tmp_path / "out"
    done = commandline.run("classify", folder, "--output", output, "--weights", weights,
                           "--top", "3", "--engine", "local", "--precision", "float32",
                           "--json", env=onednn_env())
    assert done.returncode == 1, done.stderr  # truncated.jpg
    assert json.loads(done.stdout)["precision"] == "float32"
    table = read_results(output)
    assert table.num_rows == PHOTOS
    pixels = np.stack([decode(p, (299, 299)) for p in table["path"].to_pylist()])
    probs = Xception(weights=str(weights)).predict(preprocess_input(pixels), verbose=0)
    for row, p, named in zip(table.to_pylist(), probs, decode_predictions(probs, top=3)):
        assert row["class_index"] == [int(i) for i in np.argsort(-p, kind="stable")[:3]]
        assert row["class_name"] == [name for _, name, _ in named]
        np.testing.assert_allclose(row["score"], [s for _, _, s in named], rtol=0,
                                   atol=1e-5)


def test_progress_says_images_done_rate_and_eta(monkeypatch):
    import io

    from keras_xception.batch import progress

    clock = [100.0]
    monkeypatch.setattr(progress.time, "monotonic", lambda: clock[0])
    stream = io.StringIO()
    counter = progress.Progress("embed", 100, stream, interval=5)
    counter.update(10)  # the first results: no rate to tell yet
    assert counter.line() == "embed: 10/100 images"
    clock[0] = 110.0
    counter.update(20)  # 20 more in 10 s
    assert stream.getvalue().splitlines() == [
        "embed: 30/100 images, 2.0 images/s, ETA 35s"]
    clock[0] = 120.0
    counter.update(70)
    counter.close()
    assert stream.getvalue().splitlines()[-1] == "embed: 100/100 images, 4.5 images/s"


def test_an_empty_output_path_is_refused(kitchen_photos, tmp_path):
    done = commandline.run("embed", kitchen_photos[0], "--output", "", cwd=tmp_path)
    assert done.returncode == 1 and done.stderr.count("\n") == 1
    assert "--output" in done.stderr and "is empty" in done.stderr
    assert list(tmp_path.iterdir()) == []
