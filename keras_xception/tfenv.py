"""TensorFlow's environment defaults and start-up noise, for every process we start.

`configure` sets TensorFlow's environment before anything imports it;
`install` makes its first import quiet. The command line and the
benchmark's worker processes both use them; the Ray actors and the test
processes call `install` too.

TensorFlow: importing TensorFlow 2.21 writes, straight to file descriptor 2:

    WARNING: All log messages before absl::InitializeLog() is called are written to STDERR
    I0000 00:00:1795976018.423033    6107 port.cc:153] oneDNN custom operations are on. ...

and then both lines again. Two of its shared libraries,
`libtensorflow_framework.so.2` and the profiler's `_pywrap_profiler_plugin.so`,
each link their own copy of Abseil's logging and of the code that prints the
oneDNN notice, so each prints them once when it is loaded. These lines go
through Abseil directly, not through TensorFlow's logging, so
`TF_CPP_MIN_LOG_LEVEL` does not hide them, however early it is set.

`install` therefore applies `TF_CPP_MIN_LOG_LEVEL` itself while TensorFlow
is first imported: for that moment file descriptor 2 is a pipe, and a thread
copies each line to the real stderr unless `LineFilter` hides it (an Abseil
log line below the level: `I...` from level 1, `W...` from 2, `E...` from 3;
the "before absl::InitializeLog()" notice from level 1; a repeat of one
already shown). Everything else, Python's own messages and tracebacks
included, passes through unchanged; stdout is never touched.

Python's garbage collector: importing Keras and TensorFlow makes about
750,000 objects that live as long as the process, and the cyclic collector
goes over the growing heap again and again while they are made. `install`
also pauses the collector for the first of these imports (TensorFlow's
inside Keras's, or Keras's after TensorFlow's), then freezes what exists
(`gc.freeze`: later collections skip it). Importing Keras and building and
running a small Xception then takes about 4.2 s of CPU instead of 4.9 s
(docs/benchmarks.md, "Start-up and checks"). It is meant for a process's
start, as the command line, the benchmark's workers and the Ray actors call
it: whatever exists when that import ends is frozen with it, unreachable
cycles included (a few thousand objects at start-up), and is never
collected. An import of TensorFlow after Keras's (under another backend) is
made quiet, not paused.

Optional packages: during that same first import, Keras and TensorFlow
import, when they are installed, packages for features this package's
processes never use: scikit-learn (Keras's scikit-learn wrappers), pandas
(DataFrames as `fit` and `predict` inputs), IPython (the saving editor's
notebook display), SciPy (sparse inputs to TensorFlow's legacy Keras) and,
unless it is the Keras backend, JAX (the TFLite converter's JAX path and a
patch for Orbax checkpoints). They are about 1.5 s of the 3.4 s of CPU that
importing Keras takes. `install` hides them (`_HIDDEN`) from that import,
on its own thread, and only then: Keras and TensorFlow import each of them
inside a `try` and leave that feature off in this process, and a later
`import pandas` (or any of them) works as usual. A package imported before
Keras is not hidden from it.
"""

from __future__ import annotations

import contextlib
import gc
import importlib.abc
import importlib.util
import os
import re
import sys
import threading

# The command line's default; a value the user has set is kept.
DEFAULT_LOG_LEVEL = "2"

# "I0000 00:00:1795976018.423033    6107 port.cc:153] message"
_ABSL_LINE = re.compile(rb"^([IWEF])\d{4} [\d:.]+\s+\d+( )[^\]\s]+:\d+\] ")
_ABSL_NOTICE = b"WARNING: All log messages before absl::InitializeLog() is called"
_SEVERITY = {b"I": 0, b"W": 1, b"E": 2, b"F": 3}

# How long the end of an import may take to reach the real stderr.
_DRAIN_SECONDS = 5.0


def configure() -> None:
    """Sets TensorFlow's environment before anything imports it.

    oneDNN's fp32 kernels roughly double matmul and convolution throughput on
    AVX2 CPUs where TensorFlow leaves them off by default; the command line
    turns them on unless the user has set `TF_ENABLE_ONEDNN_OPTS` already.
    `TF_CPP_MIN_LOG_LEVEL` defaults to 2 (errors only).
    """
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", DEFAULT_LOG_LEVEL)


def min_log_level() -> int:
    """`TF_CPP_MIN_LOG_LEVEL` as a number (0, the default, for anything else)."""
    try:
        return int(os.environ.get("TF_CPP_MIN_LOG_LEVEL", "0"))
    except ValueError:
        return 0


class LineFilter:
    """Decides which lines TensorFlow writes to stderr are shown.

    Hidden: an Abseil log line whose severity is below `level`, Abseil's
    "before absl::InitializeLog()" notice when `level` is 1 or more, and
    any Abseil line (or that notice) already shown once: the second shared
    library repeats them word for word, apart from the time stamp. Every
    other line is shown.

    Args:
        level: The `TF_CPP_MIN_LOG_LEVEL` in force; 0 shows each message once.
    """

    def __init__(self, level: int):
        self.level = level
        self._seen = set()

    def __call__(self, line: bytes) -> bool:
        """Whether `line` (bytes, newline included or not) is shown."""
        if line.startswith(_ABSL_NOTICE):
            key = _ABSL_NOTICE
            if self.level > 0:
                return False
        else:
            match = _ABSL_LINE.match(line)
            if match is None:
                return True
            if _SEVERITY[match.group(1)] < self.level:
                return False
            key = match.group(1) + line[match.end(2):].rstrip()
        if key in self._seen:
            return False
        self._seen.add(key)
        return True


@contextlib.contextmanager
def filtered_stderr(keep):
    """Passes what is written to file descriptor 2 through `keep(line)`.

    Args:
        keep: Called with each line (bytes); the line is shown if it
            returns True.

    Yields:
        Nothing. Where file descriptor 2 cannot be redirected (it is closed,
        say), the block runs unfiltered.
    """
    try:
        sys.stderr.flush()
        real = os.dup(2)
    except (OSError, ValueError, AttributeError):
        yield
        return
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)

    def pump():
        with os.fdopen(read_end, "rb") as lines:
            for line in lines:
                if keep(line):
                    with contextlib.suppress(OSError):
                        os.write(real, line)

    thread = threading.Thread(target=pump, name="stderr-filter", daemon=True)
    thread.start()
    try:
        yield
    finally:
        with contextlib.suppress(OSError, ValueError, AttributeError):
            sys.stderr.flush()
        os.dup2(real, 2)  # Closes this process's last write end of the pipe.
        thread.join(_DRAIN_SECONDS)
        if not thread.is_alive():  # A child may still hold the pipe open.
            os.close(real)


@contextlib.contextmanager
def collector_paused():
    """Runs the block with the cyclic garbage collector off, then freezes
    every object that exists (`gc.freeze`) and turns the collector back on
    if it was on. For imports, whose objects live as long as the process."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if was_enabled:
            gc.enable()


# The modules whose first import `install` watches.
_WATCHED = ("keras", "tensorflow")

# Hidden from the first watched import (see the module doc), by the backend
# Keras runs (for TensorFlow imported before Keras, `KERAS_BACKEND`, else
# "tensorflow"). JAX imports SciPy itself, unguarded. Hidden means not found:
# `importlib.util.find_spec` of one of them raises during that import (no
# Keras or TensorFlow version this package allows calls it then).
_HIDDEN = {
    "tensorflow": frozenset({"sklearn", "pandas", "IPython", "scipy", "jax"}),
    "jax": frozenset({"sklearn", "pandas", "IPython"}),
}


class _QuietImport(importlib.abc.MetaPathFinder):
    """Runs the first import of `tensorflow` inside `filtered_stderr`, and
    the first of the watched imports inside `collector_paused`, with the
    `_HIDDEN` packages not found.

    A module stays watched until it is imported: a spec asked for without
    an import (`importlib.util.find_spec`) is wrapped, and thrown away.
    """

    def __init__(self):
        self.pending = set()
        self.paused_once = False  # Once a process: what exists then is frozen.
        self.running = []  # The watched imports under way, outermost first.
        self.hiding = None  # The thread of the first (paused) one, while it runs.
        self._finding = set()

    def _hides(self, name):
        if self.hiding != threading.get_ident():
            return False
        # Keras reads its backend before it imports anything else.
        config = sys.modules.get("keras.src.backend.config")
        if config is not None and hasattr(config, "backend"):
            backend = config.backend()
        elif self.running == ["tensorflow"]:  # TensorFlow alone, Keras not yet.
            backend = os.environ.get("KERAS_BACKEND", "tensorflow")
        else:
            backend = None
        return name in _HIDDEN.get(backend, ())

    def find_spec(self, name, path=None, target=None):
        if self._hides(name):
            raise ModuleNotFoundError(
                f"{name} is not imported while Keras starts (keras_xception.tfenv)",
                name=name)
        if name not in self.pending or name in self._finding:
            return None
        self._finding.add(name)
        try:
            spec = importlib.util.find_spec(name)  # The finders after this one.
        finally:
            self._finding.discard(name)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        exec_module = spec.loader.exec_module
        keep = LineFilter(min_log_level()) if name == "tensorflow" else None

        def watched_exec_module(module):
            self.pending.discard(name)
            pause = not self.paused_once
            self.paused_once = True
            self.running.append(name)
            try:
                with contextlib.ExitStack() as stack:
                    if keep is not None:
                        stack.enter_context(filtered_stderr(keep))
                    if pause:
                        stack.enter_context(collector_paused())
                        self.hiding = threading.get_ident()
                    exec_module(module)
            finally:
                self.running.pop()
                if pause:
                    self.hiding = None
                if not self.pending and not self.running:
                    uninstall()

        spec.loader.exec_module = watched_exec_module
        return spec


_finder = _QuietImport()


def install() -> None:
    """Makes the first import of TensorFlow quiet, and the first import of
    Keras or TensorFlow quick (see the module doc).

    Does nothing for a module imported already.
    """
    _finder.pending = {name for name in _WATCHED if name not in sys.modules}
    if _finder.pending and _finder not in sys.meta_path:
        sys.meta_path.insert(0, _finder)


def uninstall() -> None:
    """Undoes `install` for the modules not imported since."""
    with contextlib.suppress(ValueError):
        sys.meta_path.remove(_finder)


