"""Strategies, TF_CONFIG handling and local multi-worker training."""

import json
import os
import pathlib
import subprocess
import sys
import time
import zipfile

import keras
import pytest

from keras_xception.training import distributed, launcher
from keras_xception.errors import ConfigError, XceptionError
from tests.test_fine_tune_cli import cli, make_dataset


def config(kind="worker", index=0, workers=2, chief=0):
    cluster = {"worker": [f"127.0.0.1:{2000 + i}" for i in range(workers)]}
    if chief:
        cluster["chief"] = ["127.0.0.1:1999"]
    return {"cluster": cluster, "task": {"type": kind, "index": index}}


def test_chief_is_worker_zero_unless_the_cluster_names_one():
    assert distributed.is_chief(config("worker", 0))
    assert not distributed.is_chief(config("worker", 1))
    assert distributed.is_chief(config("chief", 0, chief=1))
    assert not distributed.is_chief(config("worker", 0, chief=1))
    assert distributed.cluster_size(config(workers=3, chief=1)) == 4


def test_non_chief_workers_keep_their_state_apart(tmp_path):
    assert distributed.worker_dir(tmp_path, config("worker", 0)) == str(tmp_path)
    assert distributed.worker_dir(tmp_path, config("worker", 1)) == str(
        tmp_path / "worker-1"
    )


def test_non_chief_saves_to_a_temporary_folder(tmp_path):
    written = []

    def save(path):
        pathlib.Path(path).write_text("model")
        written.append(pathlib.Path(path))

    distributed.save_model(save, tmp_path / "m.keras", config("worker", 1))
    assert written and not written[0].exists()  # deleted with its folder
    assert not (tmp_path / "m.keras").exists()
    distributed.save_model(save, tmp_path / "m.keras", config("worker", 0))
    assert (tmp_path / "m.keras").read_text() == "model"


def test_bad_tf_config_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("TF_CONFIG", '{"cluster": {}}')
    with pytest.raises(
        ConfigError, match="TF_CONFIG must be JSON with `cluster` and `task`"
    ):
        distributed.tf_config()
    monkeypatch.delenv("TF_CONFIG")
    assert distributed.tf_config() is None
    assert distributed.is_chief()


def test_strategy_names(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    assert distributed.get_strategy("default") is None
    with pytest.raises(ConfigError, match="Unknown strategy 'ring'"):
        distributed.get_strategy("ring")
    with pytest.raises(ConfigError, match="needs TF_CONFIG"):
        distributed.get_strategy("multiworker")
    assert distributed.replicas(None) == 1
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        mirrored = distributed.get_strategy("mirrored")
        assert type(mirrored) is tf.distribute.MirroredStrategy
        assert distributed.replicas(mirrored) == mirrored.num_replicas_in_sync >= 1
        assert not distributed.multi_worker(mirrored)


def test_local_tf_configs_use_distinct_loopback_ports():
    configs = launcher.local_tf_configs(3)
    addresses = configs[0]["cluster"]["worker"]
    assert len(set(addresses)) == 3
    assert all(a.startswith("127.0.0.1:") for a in addresses)
    assert [c["task"] for c in configs] == [
        {"type": "worker", "index": i} for i in range(3)
    ]
    assert all(c["cluster"] == configs[0]["cluster"] for c in configs)


def test_a_failed_worker_is_named_and_the_others_are_stopped():
    script = (
        "import json, os, sys, time\n"
        "index = json.loads(os.environ['TF_CONFIG'])['task']['index']\n"
        "if index == 1:\n"
        "    print('error: worker one cannot read its shard', file=sys.stderr)\n"
        "    sys.exit(3)\n"
        "time.sleep(120)\n"
    )
    with pytest.raises(XceptionError) as raised:
        launcher.launch_local_workers([sys.executable, "-c", script], 2, timeout=60)
    message = str(raised.value)
    assert "Worker 1 of 2 failed with exit status 3" in message
    assert "worker one cannot read its shard" in message
    assert "\n" not in message


def test_a_worker_ends_when_its_launcher_is_killed(tmp_path):
    pid_file = tmp_path / "worker.pid"
    worker = (
        "import os, sys, time\n"
        "from keras_xception.training.launcher import watch_launcher\n"
        f"open({str(pid_file)!r}, 'w').write(str(os.getpid()))\n"
        "watch_launcher(interval=0.1)\n"
        "time.sleep(120)\n"
    )
    launcher = (
        "import os, subprocess, sys, time\n"
        "env = dict(os.environ, KERAS_XCEPTION_LAUNCHER_PID=str(os.getpid()))\n"
        f"subprocess.Popen([sys.executable, '-c', {worker!r}], env=env)\n"
        "time.sleep(120)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", launcher])
    deadline = time.monotonic() + 60
    while not pid_file.exists() or not pid_file.read_text():
        assert time.monotonic() < deadline, "worker did not start"
        time.sleep(0.1)
    pid = int(pid_file.read_text())
    proc.kill()  # SIGKILL: the launcher cannot stop its worker itself
    proc.wait(timeout=30)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)
    os.kill(pid, 9)
    raise AssertionError("the worker outlived its launcher")


@pytest.mark.slow
def test_two_workers_train_on_uneven_shards_with_validation(tmp_path):
    # 37 images, 29 for training and 8 for validation: neither divides by the
    # 2 workers times the per-worker batch of 2.
    data = make_dataset(tmp_path / "data", per_class=19)
    (data / "dog" / "dog18.png").unlink()
    out = tmp_path / "mw.keras"
    result = cli(
        data, "--output", out, "--weights", "none", "--image-size", 71,
        "--batch-size", 4, "--epochs", 1, "--fine-tune-epochs", 0,
        "--val-split", 0.2, "--strategy", "multiworker", "--workers", 2,
        timeout=400,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "training on 29, validating on 8; starting 2 local workers" in result.stderr
    assert "strategy multiworker with 2 replica(s)" in result.stderr
    assert "each worker decodes its own 15 training and 4 validation images" in result.stderr
    assert "phase 1/1 (head), epoch 1/1:" in result.stderr
    assert "Traceback" not in result.stderr
    with zipfile.ZipFile(out) as archive:
        metadata = json.loads(archive.read("metadata.json"))
    assert metadata["class_names"] == ["cat", "dog"]
    history = metadata["training"]["history"]
    # Metrics over all workers' real images: a count out of 29 and out of 8,
    # which the padding (weight 0) does not enter.
    assert history["accuracy"][0] * 29 == pytest.approx(round(history["accuracy"][0] * 29), abs=1e-4)
    assert history["val_accuracy"][0] * 8 == pytest.approx(round(history["val_accuracy"][0] * 8), abs=1e-4)
    model = keras.saving.load_model(out)
    assert model.output_shape == (None, 2)
    # Only the chief's file reached the output folder.
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "data",
        "mw.keras",
        "mw.training",
    ]
    assert not list((tmp_path / "mw.training").glob("checkpoint-*"))
