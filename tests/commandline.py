"""Runs the `keras-xception` command line as a user would: in a subprocess."""

import subprocess
import sys


def run(command, *args, env=None, timeout=300, cwd=None):
    """`python -m keras_xception.cli COMMAND ARGS...`; returns the finished process.

    Arguments are passed through `str`, so paths can be given as they are.
    """
    return subprocess.run(
        [sys.executable, "-m", "keras_xception.cli", command, *map(str, args)],
        capture_output=True, text=True, env=env, timeout=timeout, cwd=cwd,
    )
