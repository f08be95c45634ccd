"""The command line's process: Ctrl-C, stdout, warnings and TensorFlow's noise.

Ctrl-C: `interrupts` makes SIGINT set `keras_xception.fileio.cancel_event`
as well as raise `KeyboardInterrupt`. Python discards an exception raised
inside a garbage-collector callback (JAX, which TensorFlow imports when it is
installed, registers one), so the interrupt alone can be lost; the event is
not: `fileio.publish` refuses to publish once it is set, and `main` reports
the command as interrupted. Python's "Exception ignored in ..." traceback
for such a discarded `KeyboardInterrupt` is not shown.

stdout: `checked_stdout` turns a failed write to stdout (closed, a full
disk) into `StdoutError`, one line; a reader that has gone
(`BrokenPipeError`) is left to `main`, which stays quiet.

Warnings: `one_line_warnings` shows each Python warning once, as
`warning: <message>` on stderr.

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
"""

from __future__ import annotations

import contextlib
import errno
import importlib.abc
import importlib.util
import os
import re
import signal
import sys
import threading
import warnings

from keras_xception import fileio
from keras_xception.errors import XceptionError

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


class _QuietImport(importlib.abc.MetaPathFinder):
    """Runs the first import of `tensorflow` inside `filtered_stderr`."""

    def find_spec(self, name, path=None, target=None):
        if name != "tensorflow":
            return None
        uninstall()
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        exec_module = spec.loader.exec_module
        keep = LineFilter(min_log_level())

        def quiet_exec_module(module):
            with filtered_stderr(keep):
                exec_module(module)

        spec.loader.exec_module = quiet_exec_module
        return spec


_finder = _QuietImport()


def install() -> None:
    """Makes the next first import of TensorFlow quiet (see the module doc).

    Does nothing if TensorFlow is imported already.
    """
    if "tensorflow" not in sys.modules and _finder not in sys.meta_path:
        sys.meta_path.insert(0, _finder)


def uninstall() -> None:
    """Undoes `install` if TensorFlow has not been imported since."""
    with contextlib.suppress(ValueError):
        sys.meta_path.remove(_finder)


@contextlib.contextmanager
def interrupts():
    """Ctrl-C sets `fileio.cancel_event` and raises `KeyboardInterrupt`.

    Only where Python's own handler is in place (in the main thread, and not
    where SIGINT is ignored, as in a shell's background job). The event is
    cleared on entry and on exit, and the previous handler restored on exit.
    A `KeyboardInterrupt` that Python discards (raised in a garbage-collector
    callback, say) is not reported as "Exception ignored": the event stands
    for it.

    Yields:
        `fileio.cancel_event`: set once SIGINT has arrived.
    """
    event = fileio.cancel_event
    event.clear()
    installed = False
    previous = None

    def on_sigint(signum, frame):
        event.set()
        raise KeyboardInterrupt

    unraisable = sys.unraisablehook

    def on_unraisable(info):
        if not (event.is_set() and isinstance(info.exc_value, KeyboardInterrupt)):
            unraisable(info)

    with contextlib.suppress(ValueError):  # Not the main thread.
        previous = signal.getsignal(signal.SIGINT)
        if previous is signal.default_int_handler:
            signal.signal(signal.SIGINT, on_sigint)
            installed = True
    sys.unraisablehook = on_unraisable
    try:
        yield event
    finally:
        if installed:
            signal.signal(signal.SIGINT, previous)
        sys.unraisablehook = unraisable
        event.clear()


class StdoutError(XceptionError):
    """stdout cannot be written to (closed, or a full disk)."""


def _stdout_error(err=None):
    reason = (err.strerror if err is not None and err.strerror
              else os.strerror(err.errno if err is not None and err.errno
                               else errno.EBADF))
    return StdoutError(f"cannot write to stdout: {reason}")


class _CheckedStdout:
    """`stream` whose failed writes raise `StdoutError` (see the module doc)."""

    def __init__(self, stream):
        self._stream = stream

    def __getattr__(self, name):
        return getattr(self._stream, name)

    def _call(self, method, *args):
        try:
            return method(*args)
        except BrokenPipeError:
            raise
        except OSError as err:
            raise _stdout_error(err) from None

    def write(self, text):
        return self._call(self._stream.write, text)

    def writelines(self, lines):
        return self._call(self._stream.writelines, lines)

    def flush(self):
        return self._call(self._stream.flush)


class _ClosedStdout:
    """Stands for stdout when the process was started with it closed."""

    encoding = "utf-8"
    errors = "strict"

    def write(self, text):
        raise _stdout_error()

    writelines = write

    def flush(self):
        pass  # Nothing was written.

    def reconfigure(self, **kwargs):
        pass

    def isatty(self):
        return False

    def fileno(self):
        raise _stdout_error()


def _fd_is_open(fd):
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


@contextlib.contextmanager
def checked_stdout():
    """`sys.stdout` raises `StdoutError` on a failed write, for the block.

    A closed stdout (`sys.stdout` is None) is replaced by a stream whose
    every write raises it; its file descriptor is pointed at the null
    device, so that no file the command opens takes its place.
    """
    saved = sys.stdout
    if saved is None:
        if not _fd_is_open(1):
            with contextlib.suppress(OSError):
                devnull = os.open(os.devnull, os.O_WRONLY)
                if devnull != 1:
                    os.dup2(devnull, 1)
                    os.close(devnull)
        sys.stdout = _ClosedStdout()
    else:
        sys.stdout = _CheckedStdout(saved)
    try:
        yield
    finally:
        sys.stdout = saved


@contextlib.contextmanager
def one_line_warnings(stream=None):
    """Shows each Python warning once, as `warning: <message>`, for the block.

    Args:
        stream: Where warnings go; `None` for the `sys.stderr` of the moment.
    """
    shown = set()
    previous = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        text = " ".join(str(message).split())
        if text in shown:
            return
        shown.add(text)
        with contextlib.suppress(OSError, ValueError, AttributeError):
            print(f"warning: {text}", file=stream or sys.stderr, flush=True)

    warnings.showwarning = show
    try:
        yield
    finally:
        warnings.showwarning = previous
