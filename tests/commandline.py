"""Runs the `keras-xception` command line: in a subprocess, or in this process.

`run` is the command as a user starts it, for what only a real process
shows: signals, its exit status and stdout at exit, TensorFlow's start-up
lines, what importing the package does. `main` drives `keras_xception.cli.main`
here, with no TensorFlow to start, for everything else.
"""

import contextlib
import io
import os
import subprocess
import sys

# What `keras_xception.cli.main` sets for the process it runs in.
_TF_VARIABLES = ("TF_ENABLE_ONEDNN_OPTS", "TF_CPP_MIN_LOG_LEVEL")


def run(*args, env=None, timeout=300, cwd=None, stdout=None):
    """`python -m keras_xception.cli ARGS...`; returns the finished process.

    Arguments are passed through `str`, so paths can be given as they are.
    stdout and stderr are captured as text, unless `stdout` names where
    stdout goes (a file object or descriptor, as `subprocess.run` takes).
    """
    return subprocess.run(
        [sys.executable, "-m", "keras_xception.cli", *map(str, args)],
        stdout=subprocess.PIPE if stdout is None else stdout,
        stderr=subprocess.PIPE, text=True, env=env, timeout=timeout, cwd=cwd,
    )


def main(*args):
    """`keras_xception.cli.main([ARGS...])` in this process, as `run` reports it.

    Returns a `subprocess.CompletedProcess` with the exit status (a usage
    error's `SystemExit` included) and what the command wrote to
    `sys.stdout` and `sys.stderr`; see `in_process`.
    """
    argv = [str(a) for a in args]
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = in_process(argv)
    return subprocess.CompletedProcess(["keras-xception", *argv], status,
                                       out.getvalue(), err.getvalue())


def in_process(argv) -> int:
    """`keras_xception.cli.main(argv)` on this process's `sys` streams; its status.

    A usage error's `SystemExit` gives its status. The TensorFlow variables
    and Pillow's pixel limit that `main` sets are put back afterwards, so
    later commands, tests and their subprocesses see this process's settings.
    """
    from PIL import Image

    from keras_xception import cli

    saved_env = {name: os.environ.get(name) for name in _TF_VARIABLES}
    saved_limit = Image.MAX_IMAGE_PIXELS
    try:
        return cli.main(list(argv))
    except SystemExit as exit:
        return 0 if exit.code is None else exit.code
    finally:
        for name, value in saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        Image.MAX_IMAGE_PIXELS = saved_limit
