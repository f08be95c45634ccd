"""The command line's frame: help, usage errors, exit codes, pipes, TensorFlow's noise."""

import argparse
import errno
import gc
import json
import os
import signal
import subprocess
import sys
import threading
import zipfile

import pytest

from keras_xception import __version__
from keras_xception import tfenv
from keras_xception.cli import _args
from tests import commandline


@pytest.mark.parametrize("argv", [["--help"], ["classify", "--help"],
                                  ["weights", "verify", "--help"]])
def test_help_is_on_stdout_with_status_0(run_cli, argv):
    status, out, err = run_cli(*argv)
    assert status == 0, err
    assert out.startswith("usage: keras-xception")
    assert err == ""


def test_version_is_on_stdout_with_status_0(run_cli):
    assert run_cli("--version") == (0, f"keras-xception {__version__}\n", "")


def test_usage_error_points_at_the_commands_help(run_cli):
    status, _, err = run_cli("weights", "verify", "--hash")
    assert status == 1
    assert err == (
        "error: argument --hash: expected one argument "
        "(see 'keras-xception weights verify --help')\n"
    )


def test_a_reader_that_goes_away_is_not_an_error(tmp_path):
    # A real process: Python's own flush of stdout at exit must not fail.
    # `keras-xception weights path | head -c 0`: the pipe is closed before
    # anything is written, so every write to stdout fails with EPIPE.
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        done = commandline.run("weights", "path", "--cache-dir", tmp_path,
                               stdout=write_end)
    finally:
        os.close(write_end)
    assert (done.returncode, done.stderr) == (0, "")


@pytest.fixture
def in_process(monkeypatch):
    """`keras_xception.cli.main`, with this process's TensorFlow variables kept.

    `main` sets defaults for them; the tests that follow must see the
    environment they were started with.
    """
    from keras_xception import cli

    for name in ("TF_ENABLE_ONEDNN_OPTS", "TF_CPP_MIN_LOG_LEVEL"):
        if name in os.environ:
            monkeypatch.setenv(name, os.environ[name])
        else:
            monkeypatch.delenv(name, raising=False)
    return cli.main


def test_main_returns_0_when_stdout_breaks(in_process, tmp_path, monkeypatch, capsys):
    class Gone:
        def write(self, text):
            raise BrokenPipeError(32, "Broken pipe")

        def flush(self):
            raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr("sys.stdout", Gone())
    assert in_process(["weights", "path", "--cache-dir", str(tmp_path)]) == 0
    assert capsys.readouterr().err == ""


def test_ctrl_c_is_status_130_with_one_line(in_process, monkeypatch, capsys):
    from keras_xception.cli import weights

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(weights, "run", interrupted)
    assert in_process(["weights", "path"]) == 130
    assert capsys.readouterr() == ("", "interrupted\n")


def test_a_bug_keeps_its_traceback(in_process, monkeypatch):
    from keras_xception.cli import weights

    def broken(args):
        raise RuntimeError("a bug")

    monkeypatch.setattr(weights, "run", broken)
    with pytest.raises(RuntimeError, match="a bug"):
        in_process(["weights", "path"])


@pytest.mark.slow
@pytest.mark.parametrize("onednn", ["0", "1"])
def test_tensorflow_start_up_lines_are_not_shown(tmp_path, onednn):
    # This .keras file passes the quick check, so Keras (and TensorFlow) is
    # imported before loading it fails: stderr is that failure alone.
    model = tmp_path / "model.keras"
    with zipfile.ZipFile(model, "w") as archive:
        archive.writestr("config.json", '{"class_name": "NoSuchLayer", "config": {}}')
        archive.writestr("model.weights.h5", b"")
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    env["TF_ENABLE_ONEDNN_OPTS"] = onednn
    done = commandline.run("export", model, tmp_path / "out", env=env)
    assert done.returncode == 1
    assert done.stderr.startswith(f"error: Cannot load the Keras model {model}: ")
    assert done.stderr.count("\n") == 1, done.stderr


# What TensorFlow 2.21 writes while it is imported with oneDNN on.
START_UP = [
    b"WARNING: All log messages before absl::InitializeLog() is called are "
    b"written to STDERR\n",
    b"I0000 00:00:1795976018.423033    6107 port.cc:153] oneDNN custom operations "
    b"are on. You may see slightly different numerical results.\n",
    b"W0000 00:00:1795976018.5    6107 gpu_device.cc:2344] Cannot dlopen some GPU "
    b"libraries.\n",
    b"E0000 00:00:1795976018.6    6107 cuda_dnn.cc:8579] Unable to register cuDNN "
    b"factory\n",
    b"WARNING: All log messages before absl::InitializeLog() is called are "
    b"written to STDERR\n",
    b"I0000 00:00:1795976021.607716    6107 port.cc:153] oneDNN custom operations "
    b"are on. You may see slightly different numerical results.\n",
    b"Traceback (most recent call last):\n",
    b"Traceback (most recent call last):\n",
]


@pytest.mark.parametrize("level, shown", [
    (0, [0, 1, 2, 3, 6, 7]),  # Each Abseil message once; Python's lines all.
    (1, [2, 3, 6, 7]),
    (2, [3, 6, 7]),
    (3, [6, 7]),
])
def test_line_filter_follows_the_log_level_and_shows_each_message_once(level, shown):
    keep = tfenv.LineFilter(level)
    assert [i for i, line in enumerate(START_UP) if keep(line)] == shown


# Run in a fresh Python: records each collection while the first of Keras and
# TensorFlow is imported (a probe for its spec first, which imports nothing).
FIRST_IMPORT = """
import gc, importlib, importlib.util, json, sys
import numpy as np
from keras_xception import tfenv
collector, first, after = sys.argv[1:]
if collector == "off":
    gc.disable()
runs = []
gc.callbacks.append(lambda phase, info: phase == "start" and runs.append(info))
tfenv.install()
importlib.util.find_spec(first)
importlib.import_module(first)
during = len(runs)
optional = ["IPython", "jax", "pandas", "scipy", "sklearn"]
present = [name for name in optional if name in sys.modules]
import keras, tensorflow
gc.collect()
seen = {"during": during, "collected": len(runs) > during, "enabled": gc.isenabled(),
        "frozen": gc.get_freeze_count(), "present": present,
        "watching": any(f is tfenv._finder for f in sys.meta_path)}
for name in optional if after == "after" else ():  # Hidden from that import only.
    if importlib.util.find_spec(name) is not None:
        importlib.import_module(name)
seen["not_imported_after"] = [name for name in optional if after == "after" and name
                              not in sys.modules and importlib.util.find_spec(name)]
from keras.src.trainers.data_adapters import array_slicing
seen["keras_pandas"] = array_slicing.pandas is not None
seen["predicts"] = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)]).predict(
    np.ones((1, 2), "float32"), verbose=0).shape == (1, 1)
print(json.dumps(seen))
"""


@pytest.mark.slow
@pytest.mark.parametrize("collector, first, backend", [
    ("on", "keras", "tensorflow"), ("off", "keras", "tensorflow"),
    ("on", "tensorflow", "tensorflow"), ("on", "keras", "jax"), ("on", "tensorflow", "jax")])
def test_keras_is_first_imported_without_a_collection_and_then_skipped(collector, first,
                                                                      backend):
    """The collector is paused while Keras (and TensorFlow, through it) or
    TensorFlow is first imported, left as it was, and skips those objects
    from then on; TensorFlow's start-up lines stay hidden either way. The
    optional packages Keras and TensorFlow would import for features we do
    not use are not imported then, and can be imported after (checked once
    per backend: importing them takes half of each run)."""
    env = dict(os.environ, KERAS_BACKEND=backend, JAX_PLATFORMS="cpu",
               TF_CPP_MIN_LOG_LEVEL="2")
    after = "after" if (collector, first) == ("on", "keras") else "-"
    done = subprocess.run([sys.executable, "-c", FIRST_IMPORT, collector, first, after],
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    seen = json.loads(done.stdout)
    assert seen["during"] == 0 and not seen["watching"]
    assert seen["collected"]  # The explicit gc.collect(): the callbacks were live.
    assert seen["enabled"] is (collector == "on")
    assert seen["frozen"] > 100_000  # TensorFlow's (or JAX's) modules alone
    # JAX needs SciPy. TensorFlow imports Keras inside its own import.
    assert seen["present"] == ([] if backend == "tensorflow" else ["jax", "scipy"])
    # Those installed were imported after, and Keras's pandas path stays off.
    assert seen["not_imported_after"] == []
    assert not seen["keras_pandas"]
    assert seen["predicts"]


def test_only_the_thread_importing_keras_is_refused_the_optional_packages():
    # As during the first import of TensorFlow (Keras's inside it); another
    # thread (a Ray or server thread, say) imports what it likes meanwhile.
    finder = tfenv._QuietImport()
    finder.running, finder.hiding = ["tensorflow"], threading.get_ident()
    with pytest.raises(ModuleNotFoundError, match="pandas is not imported while Keras"):
        finder.find_spec("pandas")
    assert finder.find_spec("numpy") is None  # Left to the other finders.
    elsewhere = []
    thread = threading.Thread(target=lambda: elsewhere.append(finder.find_spec("pandas")))
    thread.start()
    thread.join()
    assert elsewhere == [None]
    finder.running, finder.hiding = [], None  # That import has ended.
    assert finder.find_spec("pandas") is None


def test_a_failing_import_turns_the_collector_back_on(monkeypatch):
    frozen = []
    monkeypatch.setattr(gc, "freeze", lambda: frozen.append(True))  # Not this process.
    with pytest.raises(ImportError):
        with tfenv.collector_paused():
            assert not gc.isenabled()
            raise ImportError("no such module")
    assert gc.isenabled() and frozen == [True]


def test_filtered_stderr_passes_other_lines_through(capfd):
    with tfenv.filtered_stderr(tfenv.LineFilter(2)):
        for line in START_UP[:2] + [b"a line of our own\n"]:
            os.write(2, line)
    assert capfd.readouterr().err == "a line of our own\n"


@pytest.mark.parametrize("text", ["0", "2.5", "-1", "many"])
def test_numbers_out_of_range_are_refused(text):
    with pytest.raises(argparse.ArgumentTypeError,
                       match=f"must be a positive integer. Received: '{text}'"):
        _args.positive_int(text)


@pytest.mark.parametrize("text", ["-0.1", "1.5", "nan", "inf", "half", ""])
def test_fractions_outside_0_1_are_refused(text):
    # explain's --alpha and quantize's --min-top1/--min-cosine.
    with pytest.raises(argparse.ArgumentTypeError,
                       match=f"must be a number from 0 to 1. Received: '{text}'"):
        _args.fraction(text)


def test_fractions_from_0_to_1_are_taken():
    assert [_args.fraction(t) for t in ("0", "0.4", "1", "1e-3")] == [0.0, 0.4, 1.0, 0.001]


def test_one_positive_integer_rule_for_the_library():
    import numpy as np

    from keras_xception.checks import positive_int
    from keras_xception.errors import ConfigError

    assert _args.positive_int("3") == 3
    assert positive_int(np.int64(4), "batch_size") == 4
    assert type(positive_int(np.int32(4), "batch_size")) is int
    for value in (True, 0, -1, 2.0, "3", None, np.float32(2)):
        with pytest.raises(ConfigError, match="`batch_size` must be a positive integer. Received: batch_size="):
            positive_int(value, "batch_size")
    with pytest.raises(ConfigError, match=r"--top must be an integer from 1 to 1000. "
                                          r"Received: --top 1001"):
        positive_int(1001, "--top", maximum=1000)


def test_output_paths_say_what_is_wrong(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(argparse.ArgumentTypeError, match="is a file, not a folder"):
        _args.output_path(str(tmp_path / "file" / "out"))
    assert _args.output_path(str(tmp_path / "new" / "out")) == tmp_path / "new" / "out"


def _interruptible():
    """In the child: SIGINT as a terminal delivers it (see `_run_script`)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _run_script(script, *args):
    """Runs `script` in a fresh Python: a real SIGINT stays out of this process.

    The child starts with SIGINT's default disposition, as a command typed
    at a terminal does. Without that, a suite started in the background of
    a non-interactive shell (`... &`), where SIGINT is ignored and children
    inherit that, would test a command that cannot be interrupted at all.
    """
    return subprocess.run([sys.executable, "-c", script, *map(str, args)],
                          capture_output=True, text=True, timeout=120,
                          preexec_fn=_interruptible)


def test_a_swallowed_ctrl_c_is_status_130_and_publishes_nothing(tmp_path):
    # A KeyboardInterrupt raised inside a garbage-collector callback is
    # discarded by Python: the command goes on as if nothing happened.
    script = (
        "import signal, sys\n"
        "from keras_xception import cli, fileio\n"
        "from keras_xception.cli import weights\n"
        "class Collected:\n"
        "    def __del__(self):\n"
        "        signal.raise_signal(signal.SIGINT)\n"
        "def swallows(args):\n"
        "    Collected()  # Python discards the KeyboardInterrupt of __del__.\n"
        "    fileio.write_text(sys.argv[1], 'a result')\n"
        "    print('a result')\n"
        "    return 0\n"
        "weights.run = swallows\n"
        "status = cli.main(['weights', 'path'])\n"
        "# The next command starts afresh.\n"
        "assert not fileio.cancel_event.is_set()\n"
        "assert signal.getsignal(signal.SIGINT) is signal.default_int_handler\n"
        "sys.exit(status)\n"
    )
    done = _run_script(script, tmp_path / "out.txt")
    assert (done.returncode, done.stderr) == (130, "interrupted\n")
    assert done.stdout == ""
    assert list(tmp_path.iterdir()) == []


def test_an_error_wrapping_ctrl_c_is_status_130():
    # OpenVINO's converter turns a KeyboardInterrupt into a RuntimeError.
    script = (
        "import signal, sys\n"
        "from keras_xception import cli\n"
        "from keras_xception.cli import weights\n"
        "def wraps(args):\n"
        "    try:\n"
        "        signal.raise_signal(signal.SIGINT)\n"
        "    except KeyboardInterrupt:\n"
        "        raise RuntimeError(\"Check 'false' failed: KeyboardInterrupt\") from None\n"
        "weights.run = wraps\n"
        "sys.exit(cli.main(['weights', 'path']))\n"
    )
    done = _run_script(script)
    assert (done.returncode, done.stderr) == (130, "interrupted\n")


def test_sigint_while_publishing_in_a_subprocess_leaves_nothing(tmp_path):
    # The signal arrives from outside while the command ignores it.
    script = (
        "import os, signal, sys, time\n"
        "from keras_xception import cli, fileio\n"
        "from keras_xception.cli import weights\n"
        "def run(args):\n"
        "    for _ in range(100):\n"
        "        try:\n"
        "            os.kill(os.getpid(), signal.SIGINT); time.sleep(0.05)\n"
        "        except KeyboardInterrupt:\n"
        "            break\n"
        "    fileio.write_text(sys.argv[1], 'a result')\n"
        "weights.run = run\n"
        "sys.exit(cli.main(['weights', 'path']))\n"
    )
    out = tmp_path / "out.txt"
    done = _run_script(script, out)
    assert (done.returncode, done.stderr) == (130, "interrupted\n")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("target", ["closed", "/dev/full"])
def test_stdout_that_cannot_be_written_is_one_line(tmp_path, target):
    if target == "/dev/full" and not os.path.exists(target):
        pytest.skip("no /dev/full on this system")
    # `keras-xception weights path >&-` and `>/dev/full`.
    stdout = (subprocess.DEVNULL if target == "closed" else open(target, "w"))
    args = [sys.executable, "-m", "keras_xception.cli", "weights", "path",
            "--cache-dir", str(tmp_path)]
    try:
        done = subprocess.run(
            args, stdout=stdout, stderr=subprocess.PIPE, text=True, timeout=120,
            # Closes descriptor 1 in the child, as the shell's `>&-` does.
            preexec_fn=(lambda: os.close(1)) if target == "closed" else None)
    finally:
        if target != "closed":
            stdout.close()
    reason = "Bad file descriptor" if target == "closed" else "No space left on device"
    assert (done.returncode, done.stderr) == (
        1, f"error: cannot write to stdout: {reason}\n")


def test_a_stdout_write_error_in_process_is_one_line(in_process, monkeypatch, capsys):
    import errno

    class Full:
        def write(self, text):
            raise OSError(errno.ENOSPC, "No space left on device")

        def flush(self):
            pass

    monkeypatch.setattr("sys.stdout", Full())
    assert in_process(["weights", "path"]) == 1
    assert capsys.readouterr().err == "error: cannot write to stdout: No space left on device\n"


def test_python_warnings_are_one_line_each_shown_once(in_process, monkeypatch, capsys):
    import warnings

    from keras_xception.cli import weights

    def warns(args):
        for _ in range(2):
            for where in range(2):  # Two places: Python would show both.
                warnings.warn_explicit("the cached file\nis damaged; it is not used.",
                                       UserWarning, f"file{where}.py", 127)
        return 0

    monkeypatch.setattr(weights, "run", warns)
    with warnings.catch_warnings():
        warnings.simplefilter("default")
        assert in_process(["weights", "path"]) == 0
    assert capsys.readouterr().err == (
        "warning: the cached file is damaged; it is not used.\n")


def test_benchmark_refuses_a_json_path_that_is_a_folder_before_measuring(
        in_process, monkeypatch, capsys, tmp_path):
    from keras_xception import benchmark

    monkeypatch.setattr(benchmark, "main_from_args",
                        lambda args: pytest.fail("measured before checking --json"))
    assert in_process(["benchmark", "--json", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err == (f"error: --json names a folder; give a file to write the "
                   f"results to. Received: --json {tmp_path}\n")


def test_ctrl_c_while_openvino_converts_is_a_keyboard_interrupt(monkeypatch):
    # OpenVINO's converter wraps the KeyboardInterrupt it meets.
    import keras
    import openvino

    from keras_xception.inference import openvino as runtime

    if keras.backend.backend() != "tensorflow":
        pytest.skip("OpenVINO converts through TensorFlow")

    def interrupted(model, *args, **kwargs):
        raise RuntimeError(
            "Check 'false' failed at src/frontends/common/src/frontend.cpp:54:\n"
            "Converting input model\nKeyboardInterrupt")

    monkeypatch.setattr(openvino, "convert_model", interrupted)
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(2)(inputs))
    with pytest.raises(KeyboardInterrupt):
        runtime.convert(model)


@pytest.mark.parametrize("code, advice", [
    (errno.ENOSPC, "free some space"),
    (errno.EACCES, "check its permissions"),
    (errno.EROFS, "writable file system"),
])
def test_a_full_disk_or_missing_permission_is_one_line(in_process, monkeypatch, capsys,
                                                       code, advice):
    from keras_xception.cli import weights

    def fails(args):
        raise OSError(code, os.strerror(code), "/data/out/part-000000.parquet")

    monkeypatch.setattr(weights, "run", fails)
    assert in_process(["weights", "path"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(
        f"error: {os.strerror(code)} ('/data/out/part-000000.parquet'): ")
    assert advice in err and err.count("\n") == 1 and err.endswith("\n")


def test_any_other_os_error_keeps_its_traceback(in_process, monkeypatch):
    from keras_xception.cli import weights

    def fails(args):
        raise FileNotFoundError(errno.ENOENT, "a bug", "/nowhere")

    monkeypatch.setattr(weights, "run", fails)
    with pytest.raises(FileNotFoundError):
        in_process(["weights", "path"])
