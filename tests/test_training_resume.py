"""Crash-safe checkpoints: SIGKILL then --resume, damaged checkpoints."""

import json
import os
import queue
import subprocess
import sys
import threading
import time
import zipfile

import numpy as np
import pytest

from keras_xception.errors import ConfigError
from keras_xception.training.checkpoints import Checkpoints
from tests import commandline
from tests.test_fine_tune_cli import ROOT, assert_clean_error, cli, make_dataset


def options(data, out):
    return [
        data, "--output", out, "--weights", "none", "--image-size", 71,
        "--batch-size", 2, "--epochs", 2, "--fine-tune-epochs", 1,
        "--unfreeze-from", "block14", "--val-split", 0,
    ]


def start(*args):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", KERAS_XCEPTION_OFFLINE="1")
    return subprocess.Popen(
        [sys.executable, "-m", "keras_xception.cli", "fine-tune", *map(str, args)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT,
    )


def wait_for_line(stream, prefix, timeout):
    lines = queue.Queue()
    threading.Thread(
        target=lambda: [lines.put(line) for line in stream] + [lines.put(None)],
        daemon=True,
    ).start()
    deadline = time.monotonic() + timeout
    seen = []
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=max(deadline - time.monotonic(), 0.01))
        except queue.Empty:
            break
        if line is None:
            break
        seen.append(line)
        if line.startswith(prefix):
            return seen
    raise AssertionError(f"no line starting with {prefix!r} in:\n{''.join(seen)}")


@pytest.mark.slow
def test_sigkill_during_epoch_2_then_resume_runs_every_epoch_once(tmp_path):
    data = make_dataset(tmp_path / "data", per_class=6)
    out = tmp_path / "out.keras"
    proc = start(*options(data, out))
    try:
        wait_for_line(proc.stderr, "phase 1/2 (head), epoch 1/2:", timeout=240)
        proc.kill()  # SIGKILL, in epoch 2: no chance to clean up
    finally:
        proc.kill()
        proc.wait(timeout=30)
    assert not out.exists()
    assert list((tmp_path / "out.training").glob("checkpoint-1-*.npz"))

    result = cli(*options(data, out), "--resume", timeout=300)
    assert result.returncode == 0, result.stderr
    assert "resuming from" in result.stderr
    assert "phase 1/2 (head), epoch 1/2:" not in result.stderr  # not run again
    assert "phase 2/2 (fine-tune), epoch 1/1:" in result.stderr
    with zipfile.ZipFile(out) as archive:
        history = json.loads(archive.read("metadata.json"))["training"]["history"]
    # The same epochs as a run that was never interrupted, each once.
    assert history["phase"] == ["head", "head", "fine-tune"]
    assert len(history["accuracy"]) == 3
    assert not list((tmp_path / "out.training").glob("checkpoint-*"))


def save(store, phase, epoch):
    store.save(phase, epoch, {"history": {"phase": [phase] * epoch}},
               [np.full((3, 2), epoch, "float32")], [np.int64(epoch)])


def test_a_truncated_checkpoint_falls_back_to_the_one_before(tmp_path):
    store = Checkpoints(tmp_path)
    for epoch in (1, 2, 3):
        save(store, "head", epoch)
    save(store, "fine-tune", 1)
    # The two newest are kept.
    assert [os.path.basename(p) for p in store.paths()] == [
        "checkpoint-2-0001.npz", "checkpoint-1-0003.npz"
    ]
    newest = store.paths()[0]
    with open(newest, "r+b") as f:
        f.truncate(os.path.getsize(newest) // 2)
    warnings = []
    found = store.latest(warn=warnings.append)
    assert (found.phase, found.epoch) == ("head", 3)
    assert found.model_arrays[0].tolist() == [[3, 3]] * 3
    assert len(warnings) == 1 and "checkpoint-2-0001.npz" in warnings[0]
    assert "damaged" in warnings[0]


def test_no_readable_checkpoint_is_a_one_line_error(tmp_path):
    store = Checkpoints(tmp_path)
    save(store, "head", 1)
    path = store.paths()[0]
    with open(path, "r+b") as f:
        f.truncate(100)
    with pytest.raises(ConfigError) as raised:
        store.latest()
    message = str(raised.value)
    assert "checkpoint-1-0001.npz" in message and "--overwrite" in message
    assert "\n" not in message


@pytest.mark.parametrize("phase, asked, flag", [
    ("head", ["--epochs", 4], "--epochs 4"),
    ("fine-tune", ["--epochs", 9, "--fine-tune-epochs", 2], "--fine-tune-epochs 2"),
])
def test_resume_asking_fewer_epochs_than_done_is_refused_before_the_work(
    tmp_path, phase, asked, flag
):
    data = make_dataset(tmp_path / "data", per_class=1)
    out = tmp_path / "out.keras"
    save(Checkpoints(tmp_path / "out.training"), phase, 7)
    result = commandline.main("fine-tune", *options(data, out), *asked, "--resume")
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.count("\n") == 1, result.stderr
    option, asked_for = flag.split()
    assert f"{option} (`" in result.stderr
    assert f"`) {asked_for} is fewer than the 7 {phase} epochs" in result.stderr
    assert "Resume with 7 or more" in result.stderr
    assert not out.exists()


@pytest.mark.slow
def test_resume_from_a_damaged_checkpoint_says_which_file_and_what_to_do(tmp_path):
    data = make_dataset(tmp_path / "data", per_class=2)
    out = tmp_path / "out.keras"
    (tmp_path / "out.training").mkdir()
    bad = tmp_path / "out.training" / "checkpoint-1-0001.npz"
    bad.write_bytes(b"PK\x03\x04 cut off by a crash")
    result = cli(*options(data, out), "--resume", timeout=300)
    assert_clean_error(result, "checkpoint-1-0001.npz", "damaged", "--overwrite")
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert not out.exists()


def info_array(text):
    return np.frombuffer(text.encode(), np.uint8)


GOOD_INFO = '{"format": 1, "phase": "head", "epoch": 2, "history": {"phase": []}}'


@pytest.mark.parametrize("arrays", [
    {"info": info_array("[1]")},
    {"info": info_array('"a string"')},
    {"info": info_array(GOOD_INFO.replace('"epoch": 2', '"epoch": null'))},
    {"info": info_array(GOOD_INFO.replace('"epoch": 2', '"epoch": [2]'))},
    {"info": info_array(GOOD_INFO.replace('{"phase": []}', '[1]'))},
    {"info": info_array(GOOD_INFO.replace('{"phase": []}', '{"loss": 3}'))},
    {"info": info_array(GOOD_INFO[:-1] + ', "best": "high"}')},
    {"info": info_array("\xff\xfe not utf-8")},
    {"info": info_array(GOOD_INFO), "model/00000": np.array([{}], dtype=object)},
    {"model/00000": np.zeros(3)},
], ids=["list", "string", "epoch-null", "epoch-list", "history-list",
        "history-number", "best-string", "not-utf8", "object-array", "no-info"])
def test_a_malformed_checkpoint_is_damaged_and_the_one_before_is_used(tmp_path, arrays):
    store = Checkpoints(tmp_path)
    save(store, "head", 1)
    crafted = tmp_path / "checkpoint-1-0002.npz"
    np.savez(crafted, **arrays)
    warnings = []
    found = store.latest(warn=warnings.append)
    assert (found.phase, found.epoch) == ("head", 1)
    assert len(warnings) == 1, warnings
    assert "checkpoint-1-0002.npz" in warnings[0] and "damaged" in warnings[0]
    assert "allow_pickle" not in warnings[0]


def test_a_file_that_is_not_a_checkpoint_says_so(tmp_path):
    store = Checkpoints(tmp_path)
    (tmp_path / "checkpoint-1-0001.npz").write_text("epoch 1 went well\n")
    with pytest.raises(ConfigError) as raised:
        store.latest()
    message = str(raised.value)
    assert "checkpoint-1-0001.npz" in message
    assert "not a checkpoint written by keras-xception" in message
    assert "pickle" not in message and "\n" not in message


def test_resume_from_a_crafted_checkpoint_is_a_one_line_error(tmp_path):
    data = make_dataset(tmp_path / "data", per_class=1)
    out = tmp_path / "out.keras"
    work = tmp_path / "w"
    work.mkdir()
    np.savez(work / "checkpoint-1-0001.npz", info=info_array("[1]"))
    result = cli(*options(data, out), "--work-dir", work, "--resume", timeout=120)
    assert_clean_error(result, "checkpoint-1-0001.npz", "damaged", "--overwrite")
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert not out.exists()
