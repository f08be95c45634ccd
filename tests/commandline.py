"""Runs the `keras-xception` command line as a user would: in a subprocess."""

import subprocess
import sys


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
