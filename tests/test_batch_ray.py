"""`keras-xception embed --engine ray` against a real two-node Ray cluster.

One cluster per module (`ray.cluster_utils.Cluster`: two raylets on this
machine, one CPU each), on 127.0.0.1 only: with
RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 Ray 2.60 keeps every node of a
`Cluster` on loopback instead of the machine's network address. The job
runs in a subprocess, as a user's would, and its results must equal the
local engine's on the same model.
"""

import os
import shutil
import subprocess
import sys

import numpy as np
import pyarrow.dataset as pds
import pytest

# The ray extra is part of the test extra: a missing Ray fails here.
import ray  # noqa: E402

from keras_xception.errors import ConfigError

LOOPBACK = "127.0.0.1"
MIB = 1024 * 1024

# Ray clusters never run two at once: tests/test_serve_ray.py is in this group too.
pytestmark = pytest.mark.xdist_group("ray")


@pytest.fixture(scope="module")
def cluster():
    from ray.cluster_utils import Cluster

    previous = os.environ.get("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    node = {"num_cpus": 1, "object_store_memory": 200 * MIB,
            "node_ip_address": LOOPBACK}
    cluster = Cluster(initialize_head=True,
                      head_node_args={**node, "include_dashboard": True,
                                      "dashboard_host": LOOPBACK})
    try:
        cluster.add_node(**node)
        cluster.wait_for_nodes()
        yield cluster
    finally:
        cluster.shutdown()
        if previous is None:
            os.environ.pop("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", None)
        else:
            os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = previous


@pytest.fixture(scope="module")
def small_classifier(tmp_path_factory):
    import keras

    from keras_xception.training.classifier import build_classifier
    from keras_xception.training.saving import save_classifier

    keras.utils.set_random_seed(2)
    model = build_classifier(2, image_size=71, weights=None, augment=False)
    path = tmp_path_factory.mktemp("model") / "small.keras"
    save_classifier(model, path)
    return path


@pytest.mark.slow
def test_embedded_ray_stays_on_loopback_and_its_actors_write_what_the_local_engine_does(
        small_classifier, kitchen_photos, tmp_path, monkeypatch):
    """No address: Ray starts embedded, on 127.0.0.1, and is shut down after.

    Two jobs: `classify` of a list of paths with a missing one, on a Ray
    started here to see its nodes, then `embed` of a folder with a name that
    is not UTF-8 and a broken image, which starts and stops Ray itself as
    the command line's job does. What reaches the driver per shard is its
    counts and errors, never its rows: the actors write the shards.
    """
    import pickle

    from keras_xception import batch
    from keras_xception.batch import ray_engine, sink

    # Where Ray would otherwise look for a cluster to join.
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    folder = tmp_path / "in"
    folder.mkdir()
    for photo in kitchen_photos[:3]:
        shutil.copy(photo, folder / photo.name)
    listed = tmp_path / "missing.txt"
    listed.write_text(f"{folder / 'gone.jpg'}\n")
    sources = [folder / p.name for p in kitchen_photos[:3]] + [listed]
    name = os.fsdecode(os.fsencode(folder) + b"/not-utf8-\xe9.jpg")
    shutil.copy(kitchen_photos[3], name)
    (folder / "broken.jpg").write_bytes(b"not a jpeg")
    received = []
    get = ray.get

    def recording_get(refs, *args, **kwargs):
        values = get(refs, *args, **kwargs)
        received.extend(values if isinstance(refs, list) else [values])
        return values

    def driver_write(*args, **kwargs):
        raise AssertionError("the driver wrote a shard")

    with ray_engine.connected() as connected:
        nodes = connected.nodes()
        assert [n["NodeManagerAddress"] for n in nodes] == [LOOPBACK]
        classified = batch.run("classify", sources, tmp_path / "ray_classes", engine="ray",
                               model_path=small_classifier, top=2, batch_size=2,
                               shard_size=2)
    assert not ray.is_initialized()
    with monkeypatch.context() as patch:
        patch.setattr(ray, "get", recording_get)
        patch.setattr(sink, "write_shard", driver_write)
        embedded = batch.run("embed", [folder], tmp_path / "ray_embed", engine="ray",
                             model_path=small_classifier, batch_size=2, shard_size=2)
    assert not ray.is_initialized()

    # classify: the same rows as the local engine.
    assert classified["engine"] == "ray" and classified["counts"]["errors"] == 1
    local = batch.run("classify", sources, tmp_path / "local_classes", engine="local",
                      model_path=small_classifier, top=2, batch_size=2, shard_size=2)
    assert local["counts"] == classified["counts"]
    got = pds.dataset(tmp_path / "ray_classes", format="parquet").to_table().sort_by("path")
    want = pds.dataset(tmp_path / "local_classes", format="parquet").to_table().sort_by("path")
    assert got.num_rows == 3
    assert got["path"].to_pylist() == want["path"].to_pylist()
    assert got["class_index"].to_pylist() == want["class_index"].to_pylist()
    np.testing.assert_allclose(
        np.array(got["score"].to_pylist()), np.array(want["score"].to_pylist()),
        rtol=0, atol=1e-5)

    # embed: the driver got one small report per shard, and no rows.
    assert embedded["counts"] == {"inputs": 5, "images": 4, "errors": 1, "shards": 3}
    reports = [r for r in received if isinstance(r, ray_engine.ShardDone)]
    assert sorted(r.index for r in reports) == [0, 1, 2]
    assert sum(r.rows for r in reports) == 4
    # One embedding alone is 8 KiB; a whole report is a fraction of that.
    assert all(len(pickle.dumps(r)) < 1024 for r in reports)
    assert len(received) == len(reports), [type(r) for r in received]
    batch.run("embed", [folder], tmp_path / "local_embed", engine="local",
              model_path=small_classifier, batch_size=2, shard_size=2)
    got = pds.dataset(tmp_path / "ray_embed", format="parquet").to_table().sort_by("path_bytes")
    want = pds.dataset(tmp_path / "local_embed", format="parquet").to_table().sort_by(
        "path_bytes")
    assert got["path_bytes"].to_pylist() == want["path_bytes"].to_pylist()
    assert os.fsencode(name) in got["path_bytes"].to_pylist()
    np.testing.assert_allclose(
        np.stack(got["embedding"].to_numpy(zero_copy_only=False)),
        np.stack(want["embedding"].to_numpy(zero_copy_only=False)), rtol=0, atol=1e-5)


@pytest.mark.slow
def test_embed_on_a_two_node_cluster_equals_the_local_engine(
        cluster, small_classifier, kitchen_photos, tmp_path):
    from ray.util import state

    from keras_xception import batch

    folder = tmp_path / "in"
    folder.mkdir()
    for photo in kitchen_photos[:6]:
        shutil.copy(photo, folder / photo.name)
    (folder / "broken.jpg").write_bytes(b"not a jpeg")
    output = tmp_path / "ray"
    env = dict(os.environ, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0")
    done = subprocess.run(
        [sys.executable, "-m", "keras_xception.cli", "embed", str(folder),
         "--output", str(output), "--model", str(small_classifier), "--engine", "ray",
         "--address", cluster.address, "--batch-size", "2", "--shard-size", "3"],
        capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 1, done.stderr  # broken.jpg
    assert "broken.jpg" in done.stderr

    local = batch.run("embed", [folder], tmp_path / "local", engine="local",
                      model_path=small_classifier, batch_size=2, shard_size=3)
    got = pds.dataset(output, format="parquet").to_table().sort_by("path")
    want = pds.dataset(tmp_path / "local", format="parquet").to_table().sort_by("path")
    assert got["path"].to_pylist() == want["path"].to_pylist()
    assert len(got) == 6 and local["counts"]["errors"] == 1
    np.testing.assert_allclose(
        np.stack(got["embedding"].to_numpy(zero_copy_only=False)),
        np.stack(want["embedding"].to_numpy(zero_copy_only=False)), rtol=0, atol=1e-5)

    # Both nodes worked: Ray's state API says where the tasks and actors ran.
    address = cluster.webui_url if cluster.webui_url.startswith("http") \
        else f"http://{cluster.webui_url}"
    nodes = {n.node_id for n in state.list_nodes(address=address)}
    assert len(nodes) == 2
    used = {t.node_id for t in state.list_tasks(address=address, limit=10_000)
            if t.node_id} | {a.node_id for a in state.list_actors(address=address)
                             if a.node_id}
    assert used == nodes


def test_embedded_start_restores_rays_switch_even_when_ray_fails(monkeypatch):
    """The loopback switch is set only while Ray starts, on every path."""
    from ray._private import ray_constants

    from keras_xception.batch import ray_engine

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "1")
    monkeypatch.setattr(ray_constants, "ENABLE_RAY_CLUSTER", True)
    seen = {}

    def failing_init(**options):
        seen.update(options, env=os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"],
                    switch=ray_constants.ENABLE_RAY_CLUSTER)
        raise ConnectionError("no Ray today")

    monkeypatch.setattr(ray, "init", failing_init)
    # Ray's failure is one line naming where it tried to connect.
    with pytest.raises(ConfigError, match="cannot connect to Ray at 'this machine': no Ray"):
        with ray_engine.connected():
            pass
    assert (seen["env"], seen["switch"]) == ("0", False)
    assert seen["address"] == "local" and seen["_node_ip_address"] == LOOPBACK
    assert os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] == "1"
    assert ray_constants.ENABLE_RAY_CLUSTER is True
    # A cluster address is used as given, without the switch.
    seen.clear()
    with pytest.raises(ConfigError, match="'127.0.0.1:1'"):
        with ray_engine.connected("127.0.0.1:1"):
            pass
    assert seen["address"] == "127.0.0.1:1" and seen["switch"] is True
    assert "_node_ip_address" not in seen


@pytest.mark.parametrize("address, message", [
    ("127.0.0.1:1", "cannot reach the Ray cluster at '127.0.0.1:1'"),
    ("ray://", "--address must be auto, HOST:PORT or ray://HOST:PORT"),
    ("http://x", "--address must be"),
    ("127.0.0.1:notaport", "--address must be"),
])
def test_a_bad_cluster_address_is_one_line_before_any_output(address, message, tmp_path,
                                                             kitchen_photos):
    output = tmp_path / "out"
    done = subprocess.run(
        [sys.executable, "-m", "keras_xception.cli", "embed", str(kitchen_photos[0]),
         "--output", str(output), "--engine", "ray", "--address", address],
        capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and not done.stdout
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], done.stderr
    assert not output.exists()
