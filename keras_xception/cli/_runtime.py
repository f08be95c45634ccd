"""The command line's process: Ctrl-C, stdout and warnings.

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

TensorFlow's start-up noise is kept out by `keras_xception.tfenv`.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import sys
import warnings

from keras_xception import fileio
from keras_xception.errors import XceptionError

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
