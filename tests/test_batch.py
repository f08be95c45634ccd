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
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pyarrow.dataset as pds
import pyarrow.parquet as pq
import pytest

from tests import commandline, realweights

PHOTOS = 4


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
    done = commandline.main("embed", folder, "--output", output, "--weights",
                            imagenet_notop_files["keras3"], "--shard-size", "2",
                            "--engine", "local", "--json")
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
    # An independent reference: keras.applications on pixels Pillow decodes
    # here (at 299x299 from these 750x1000 JPEGs the package's decoder gives
    # the same pixels, so the tolerance stays that of kernel order).
    import keras

    table = read_results(embedded[0])
    pixels = realweights.pillow_pixels(table["path"].to_pylist(), 299)
    model = keras.applications.Xception(include_top=False, pooling="avg",
                                        weights=str(imagenet_notop_files["keras3"]))
    expected = model.predict(pixels / 127.5 - 1, verbose=0)
    np.testing.assert_allclose(embeddings(table), expected, rtol=0, atol=1e-5)


def test_a_rerun_skips_finished_shards(embedded, folder, imagenet_notop_files):
    output, _ = embedded
    before = {p.name: p.stat().st_mtime_ns for p in output.glob("part-*.parquet")}
    done = commandline.main("embed", folder, "--output", output, "--weights",
                            imagenet_notop_files["keras3"], "--shard-size", "2",
                            "--engine", "local")
    assert done.returncode == 1, done.stderr  # the broken image is still broken
    after = {p.name: p.stat().st_mtime_ns for p in output.glob("part-*.parquet")}
    assert after == before
    assert read_results(output).num_rows == PHOTOS


def test_another_model_is_refused_without_overwrite(embedded, folder, imagenet_notop_files):
    output, _ = embedded
    before = sorted(p.name for p in output.iterdir())
    done = commandline.main("embed", folder, "--output", output, "--weights",
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


@pytest.mark.slow
def test_classify_writes_top_k_lists_with_the_model_class_names(
        small_classifier, folder, tmp_path):
    from keras_xception import batch
    from keras_xception.training.saving import load_classifier

    manifest = batch.run("classify", [folder], tmp_path / "out", engine="local",
                         model_path=small_classifier, top=2)
    assert manifest["counts"]["errors"] == 1
    table = read_results(tmp_path / "out")
    assert table.column_names == ["path", "class_index", "class_name", "score",
                                  "path_bytes"]
    model = load_classifier(small_classifier)
    # Pillow in the test, decoding at a reduced scale as documented.
    pixels = realweights.pillow_pixels(table["path"].to_pylist(), 71, draft=True)
    probs = model.predict(pixels, verbose=0)
    for row, p in zip(table.to_pylist(), probs):
        order = [int(i) for i in np.argsort(-p, kind="stable")]
        assert row["class_index"] == order
        assert row["class_name"] == [("cup", "fork")[i] for i in order]
        np.testing.assert_allclose(row["score"], p[order], rtol=0, atol=1e-5)


@pytest.mark.slow
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
    done = commandline.main("embed", tmp_path / "list.csv", "--output", tmp_path / "out")
    assert done.returncode == 1
    assert done.stderr.strip().count("\n") == 0
    assert "no column 'path'" in done.stderr and "--path-column" in done.stderr


@pytest.mark.slow
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


@pytest.mark.slow
def test_overwrite_replaces_another_models_results(embedded, small_classifier, folder,
                                                   tmp_path):
    output = tmp_path / "out"
    shutil.copytree(embedded[0], output)
    old = {p.name for p in output.glob("part-*.parquet")}
    done = commandline.main("embed", folder, "--output", output, "--model",
                            small_classifier, "--shard-size", "3", "--engine", "local",
                            "--overwrite", "--json")
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


@pytest.mark.slow
@pytest.mark.numerics
def test_classify_with_imagenet_top_weights_names_imagenet_classes(
        folder, imagenet_top_weights, tmp_path):
    import keras

    from keras_xception import decode_predictions
    weights = imagenet_top_weights
    output = tmp_path / "out"
    done = commandline.main("classify", folder, "--output", output, "--weights", weights,
                            "--top", "3", "--engine", "local", "--precision", "float32",
                            "--json")
    assert done.returncode == 1, done.stderr  # truncated.jpg
    assert json.loads(done.stdout)["precision"] == "float32"
    table = read_results(output)
    assert table.num_rows == PHOTOS
    # keras.applications on Pillow's pixels, as in the embeddings test.
    pixels = realweights.pillow_pixels(table["path"].to_pylist(), 299)
    probs = keras.applications.Xception(weights=str(weights)).predict(
        pixels / 127.5 - 1, verbose=0)
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


def test_an_empty_output_path_is_refused(kitchen_photos, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    done = commandline.main("embed", kitchen_photos[0], "--output", "")
    assert done.returncode == 1 and done.stderr.count("\n") == 1
    assert "--output" in done.stderr and "is empty" in done.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_a_name_that_is_not_utf8_is_stored_losslessly_and_uniquely(
        small_classifier, kitchen_photos, tmp_path):
    """Byte 0xE9 and a literal backslash-x-e-9 show alike in `path`; `path_bytes` differs."""
    from keras_xception import batch
    from keras_xception.batch import sources

    folder = tmp_path / "in"
    folder.mkdir()
    raw = os.fsencode(folder)
    (pathlib.Path(os.fsdecode(raw + b"/bad\xe9name.jpg"))).write_bytes(
        kitchen_photos[0].read_bytes())
    (folder / "bad\\xe9name.jpg").write_bytes(kitchen_photos[1].read_bytes())
    pathlib.Path(os.fsdecode(raw + b"/broken\xff.jpg")).write_bytes(b"not a jpeg")
    manifest = batch.run("embed", [folder], tmp_path / "out", engine="local",
                         model_path=small_classifier)
    assert manifest["columns"] == ["path", "embedding", "path_bytes"]
    rows = pq.read_table(tmp_path / "out").to_pylist()
    stored = sorted(row["path_bytes"] for row in rows)
    assert stored == sorted([raw + b"/bad\xe9name.jpg", raw + b"/bad\\xe9name.jpg"])
    # The text column reads the same for both (so it cannot be the key) ...
    assert {row["path"] for row in rows} == {str(folder) + "/bad\\xe9name.jpg"}
    # ... and the bytes open the file each row was computed from.
    by_content = {photo.read_bytes(): i for i, photo in enumerate(kitchen_photos[:2])}
    vectors = {}
    for row in rows:
        with open(os.fsdecode(row["path_bytes"]), "rb") as f:
            vectors[by_content[f.read()]] = np.asarray(row["embedding"], np.float32)
    assert sorted(vectors) == [0, 1] and not np.allclose(vectors[0], vectors[1])
    errors = pq.read_table(tmp_path / "out" / "_errors.parquet").to_pylist()
    assert [e["path_bytes"] for e in errors] == [raw + b"/broken\xff.jpg"]
    assert os.path.exists(os.fsdecode(errors[0]["path_bytes"]))
    # A job's results are a list of inputs for the next, names kept.
    listed = sources.read_list(next((tmp_path / "out").glob("part-*.parquet")),
                               "path_bytes")
    assert sorted(os.fsencode(p) for p in listed) == stored


@pytest.mark.slow
def test_a_second_job_on_the_output_fails_at_once_and_a_killed_jobs_lock_does_not_block(
        small_classifier, kitchen_photos, tmp_path):
    from keras_xception import batch
    from keras_xception.errors import ConfigError

    output = tmp_path / "out"
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys\n"
         "from keras_xception.batch.sink import Sink\n"
         "sink = Sink(sys.argv[1], 'embed')\n"
         "sink.open({'model': None, 'sources': []}, [], overwrite=False)\n"
         "print('locked', flush=True)\n"
         "sys.stdin.read()\n", str(output)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        # Refused before the sources are read or the model is looked at: a
        # missing source and a missing model would be other errors.
        with pytest.raises(ConfigError) as refused:
            batch.run("embed", [tmp_path / "nothing-here"], output, engine="local",
                      model_path=tmp_path / "no.keras")
        message = str(refused.value)
        assert "\n" not in message
        assert repr(str(output)) in message and "another job" in message
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=60)
    assert holder.returncode == -signal.SIGKILL
    manifest = batch.run("embed", [kitchen_photos[0]], output, engine="local",
                         model_path=small_classifier, overwrite=True)
    assert manifest["counts"]["images"] == 1


def test_no_output_is_written_until_every_check_passes(small_classifier, kitchen_photos,
                                                         tmp_path, monkeypatch):
    import importlib.util

    from keras_xception import batch
    from keras_xception.errors import ConfigError

    output = tmp_path / "out"
    find_spec = importlib.util.find_spec

    def without(*absent):
        return lambda name, *args: None if name in absent else find_spec(name, *args)

    with monkeypatch.context() as patch:
        patch.setattr(importlib.util, "find_spec", without("pyarrow"))
        with pytest.raises(ConfigError, match=r"^embed needs pyarrow.*keras-xception\[batch\]"):
            batch.run("embed", [kitchen_photos[0]], output, engine="local",
                      model_path=small_classifier)
    with monkeypatch.context() as patch:
        patch.setattr(importlib.util, "find_spec", without("ray"))
        with pytest.raises(ConfigError, match=r"^--engine ray needs ray.*keras-xception\[ray\]"):
            batch.run("embed", [kitchen_photos[0]], output, engine="ray",
                      model_path=small_classifier)
    # A check only the model can answer (--top against its classes, made
    # when the model is read) comes before the output folder is touched.
    with pytest.raises(ConfigError, match=r"--top must be from 1 to 2.*--top 3"):
        batch.run("classify", [kitchen_photos[0]], output, engine="local",
                  model_path=small_classifier, top=3)
    assert not output.exists()


@pytest.mark.slow
def test_a_top_above_the_class_count_writes_nothing_so_the_corrected_rerun_runs(
        small_classifier, kitchen_photos, tmp_path):
    from keras_xception import batch
    from keras_xception.errors import ConfigError

    output = tmp_path / "out"
    with pytest.raises(ConfigError, match="--top"):
        batch.run("classify", [kitchen_photos[0]], output, engine="local",
                  model_path=small_classifier, top=3)
    assert not output.exists()
    manifest = batch.run("classify", [kitchen_photos[0]], output, engine="local",
                         model_path=small_classifier, top=2)
    assert manifest["counts"]["images"] == 1


@pytest.mark.slow
def test_a_rerun_removes_the_temporaries_a_killed_run_left(small_classifier, kitchen_photos,
                                                          tmp_path):
    from keras_xception import batch, fileio
    from keras_xception.batch import sink

    output = tmp_path / "out"

    def job():
        return batch.run("embed", [kitchen_photos[0], tmp_path / "gone.jpg"], output,
                         engine="local", model_path=small_classifier)

    job()
    part = next(output.glob("part-*.parquet"))
    before = part.stat().st_mtime_ns
    # What fileio leaves when a process is killed between write and rename.
    left = [(output, part.name), (output, sink.JOB), (output, sink.MANIFEST),
            (output, sink.ERRORS), (output / sink.ERROR_PARTS, part.name)]
    for folder, name in left:
        (folder / f".{name}.k1ll3d{fileio.TEMP_SUFFIX}.parquet").write_bytes(b"half")
        assert fileio.stale_temporaries(folder, name)
    assert job()["counts"] == {"inputs": 1, "images": 1, "errors": 1, "shards": 1}
    assert [p for folder, name in left for p in fileio.stale_temporaries(folder, name)] == []
    assert part.stat().st_mtime_ns == before  # the finished shard was kept
