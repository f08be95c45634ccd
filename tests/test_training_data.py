"""Training data: the folder scan, per-worker shards, and images that go bad."""

import os
import sys

import numpy as np
import pytest
from PIL import Image

from keras_xception.errors import DataError
from keras_xception.training import data


def write_png(path, value):
    pixels = np.full((24, 24, 3), value, "uint8")
    Image.fromarray(pixels).save(path)


def batches(ds):
    images, labels, weights = [], [], []
    for x, y, w in ds.as_numpy_iterator():
        images.append(x)
        labels.append(y)
        weights.append(w)
    return np.concatenate(images), np.concatenate(labels), np.concatenate(weights)


@pytest.mark.parametrize("count", [1, 2, 3, 4])
def test_shards_use_every_image_once_and_pad_to_equal_length(count):
    paths = [f"img{i}.png" for i in range(37)]
    labels = [i % 2 for i in range(37)]
    shards = [data.shard(paths, labels, i, count) for i in range(count)]
    assert len({len(s[0]) for s in shards}) == 1  # same steps on every worker
    real = [p for s in shards for p, w in zip(s[0], s[2]) if w == 1.0]
    assert sorted(real) == sorted(paths)  # each image exactly once
    padding = [(p, w) for s in shards for p, w in zip(s[0], s[2]) if w != 1.0]
    assert all(p == "" and w == 0.0 for p, w in padding)
    assert len(padding) == -(-37 // count) * count - 37


def test_an_image_deleted_after_the_scan_is_skipped_with_a_warning(tmp_path, capsys):
    for name, value in (("cat", 30), ("dog", 200)):
        (tmp_path / name).mkdir()
        for i in range(3):
            write_png(tmp_path / name / f"{name}{i}.png", value)
    folder = data.scan(tmp_path)
    gone = tmp_path / "dog" / "dog1.png"
    gone.unlink()
    ds = data.make_dataset(folder.paths, folder.labels, image_size=8, batch_size=4)
    images, labels, weights = batches(ds)
    assert labels.tolist() == list(folder.labels)
    skipped = folder.paths.index(str(gone))
    assert weights.tolist() == [0.0 if i == skipped else 1.0 for i in range(6)]
    assert not images[skipped].any()
    assert images[0].mean() == pytest.approx(30, abs=1)
    err = capsys.readouterr().err
    assert err.count("warning: skipped an image") == 1 and "dog1.png" in err


@pytest.mark.skipif(sys.platform == "darwin", reason="macOS file systems require UTF-8 names")
def test_file_names_that_are_not_utf8_train(tmp_path):
    root = os.fsencode(tmp_path)
    for name, value in ((b"cat", 30), (b"dog", 200)):
        os.mkdir(os.path.join(root, name))
        write_png(os.path.join(root, name, b"caf\xe9-" + name + b".png"), value)
    folder = data.scan(tmp_path)
    assert any("\udce9" in p for p in folder.paths)  # undecodable byte kept
    _, _, weights = batches(
        data.make_dataset(folder.paths, folder.labels, image_size=8, batch_size=2)
    )
    assert weights.tolist() == [1.0, 1.0]


def test_scan_reads_headers_and_names_every_bad_file_on_one_line(tmp_path):
    for name in ("cat", "dog"):
        (tmp_path / name).mkdir()
        write_png(tmp_path / name / "ok.png", 90)
    (tmp_path / "cat" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    good = (tmp_path / "dog" / "ok.png").read_bytes()
    (tmp_path / "dog" / "truncated.png").write_bytes(good[:60])
    (tmp_path / "dog" / "notes.txt").write_text("labels by hand")
    with pytest.raises(DataError) as raised:
        data.scan(tmp_path)
    message = str(raised.value)
    assert "\n" not in message
    for fragment in ("3 of the 5 files", "broken.jpg", "truncated.png", "notes.txt"):
        assert fragment in message


def test_a_jpeg_cut_short_is_refused_and_one_with_bytes_after_its_end_is_kept(tmp_path):
    # A copy or download stopped early keeps a header Pillow recognises.
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (64, 64, 3), dtype="uint8")
    for name in ("cat", "dog"):
        (tmp_path / name).mkdir()
        Image.fromarray(pixels).save(tmp_path / name / "ok.jpg", quality=95)
    whole = (tmp_path / "cat" / "ok.jpg").read_bytes()
    (tmp_path / "dog" / "extra.jpg").write_bytes(whole + b"camera notes")
    assert len(data.scan(tmp_path).paths) == 3

    (tmp_path / "dog" / "cut.jpg").write_bytes(whole[: len(whole) * 2 // 3])
    # A phone's photo is often an MPO: two JPEGs in one file, Pillow's "MPO".
    two = tmp_path / "two.jpg"
    Image.fromarray(pixels).save(two, "MPO", save_all=True,
                                 append_images=[Image.fromarray(pixels[::-1])])
    with Image.open(two) as opened:
        assert opened.format == "MPO"
    (tmp_path / "cat" / "cut_mpo.jpg").write_bytes(two.read_bytes()[: two.stat().st_size // 4])
    two.unlink()
    with pytest.raises(DataError) as raised:
        data.scan(tmp_path)
    message = str(raised.value)
    assert "2 of the 5 files" in message
    assert "cut.jpg" in message and "cut_mpo.jpg" in message


@pytest.mark.slow
def test_an_image_unreadable_during_training_is_skipped_and_the_command_ends(
    tmp_path, monkeypatch
):
    from tests.test_fine_tune_cli import cli, make_dataset

    data = make_dataset(tmp_path / "data", per_class=2)
    # A file that went bad after the scan: the variable tells the command,
    # as the launcher tells its workers, that the folder was checked already.
    (data / "cat" / "cut.jpg").write_bytes(b"\xff\xd8\xff\xe0 cut off")
    monkeypatch.setenv("KERAS_XCEPTION_DATA_CHECKED", "1")
    result = _run(data, tmp_path / "out.keras", cli)
    assert result.returncode == 0, result.stderr
    warnings = [l for l in result.stderr.splitlines() if l.startswith("warning:")]
    assert len(warnings) == 1 and "cut.jpg" in warnings[0], result.stderr
    assert "Traceback" not in result.stderr
    assert (tmp_path / "out.keras").is_file()


def _run(data, out, cli):
    return cli(
        data, "--output", out, "--weights", "none", "--image-size", 71,
        "--batch-size", 5, "--epochs", 1, "--fine-tune-epochs", 0, "--val-split", 0,
        timeout=60,  # the process ends: no hang after a bad image
    )
