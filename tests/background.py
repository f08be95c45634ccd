"""The suite's reruns in other settings, run at low priority beside the rest.

Two tests run other pytest processes over parts of the suite: the oneDNN
rerun (tests/test_onednn_rerun.py) and the JAX rerun
(tests/test_jax_backend.py). A test marked `background(name, command)` (`command()`
gives the argv, environment and folder, or None where the test will skip) has its
process started when collection has selected the test, in whichever pytest
process of the run gets there first, at the lowest priority (nice 19,
`NICENESS`). While the suite's own processes keep the CPUs busy it gets
almost none of their time: it runs in what they leave idle (a test waiting
for a server or a subprocess, a worker with nothing left), and the test
itself, handed out last (tests/conftest.py), waits for its status and
output.

Each run has files in the run's shared folder (`KERAS_XCEPTION_TEST_SHARED`):
`NAME.started` (made by the one process that starts it), `NAME.pid` (its
process group, which the run's first pytest process kills at its end if it
is still running), `NAME.log` (its output) and `NAME.status` (its exit
status, written when it ends). Its launcher (`LAUNCHER`) lowers its own
priority before it starts the command, in the same session (so that the
kernel's per-session grouping does not give it a share of its own), and
writes the status itself: the test waits for it whichever pytest process
started the run and whether or not that process is still there.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import signal
import subprocess
import sys
import time

LAUNCHER = r'''
import os, subprocess, sys
status_path, log_path, timeout = sys.argv[1], sys.argv[2], float(sys.argv[3])
if hasattr(os, "setpriority"):
    os.setpriority(os.PRIO_PROCESS, 0, int(sys.argv[4]))
with open(log_path, "w") as log:
    try:
        status = subprocess.run(sys.argv[5:], stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, timeout=timeout).returncode
    except subprocess.TimeoutExpired:
        status = "timeout"
with open(status_path + ".tmp", "w") as f:
    f.write(f"{status}\n")
os.replace(status_path + ".tmp", status_path)
'''
TIMEOUT_S = 1800  # the run's own limit; the waiting test allows a minute more
# Unix's priority for the runs (0 normal, 19 lowest). At 19 they get little
# but the time the workers leave idle. At 10 (about a twentieth of a CPU
# beside two busy workers, on top of that) the tests that start Ray took two
# to three times as long, and the suite was no shorter: docs/benchmarks.md,
# "The test suite".
NICENESS = 19


def _folder() -> pathlib.Path:
    return pathlib.Path(os.environ["KERAS_XCEPTION_TEST_SHARED"])


def start(name, command) -> bool:
    """Starts `command()` (argv, environment and folder) in the background,
    unless a process of this run already has.

    Returns whether this process started it (False also where `command()`
    is None: the test skips).
    """
    spec = command()
    if spec is None:
        return False
    folder = _folder()
    folder.mkdir(parents=True, exist_ok=True)
    try:
        os.close(os.open(folder / f"{name}.started", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return False
    argv, env, cwd = spec
    process = subprocess.Popen(
        [sys.executable, "-c", LAUNCHER, str(folder / f"{name}.status"),
         str(folder / f"{name}.log"), str(TIMEOUT_S), str(NICENESS), *argv],
        env=env, cwd=cwd, stdin=subprocess.DEVNULL, process_group=0)
    (folder / f"{name}.pid").write_text(f"{process.pid}\n")
    _started.append(process)  # Reaped by `stop_all` or when it ends.
    return True


_started: list[subprocess.Popen] = []


def result(name, command, timeout=TIMEOUT_S + 60):
    """`(status, output)` of the run `name`: started here if no process of this
    run has started it, then waited for (`status` is an int, or "timeout")."""
    folder = _folder()
    start(name, command)
    status_path = folder / f"{name}.status"
    pid_path = folder / f"{name}.pid"
    deadline = time.monotonic() + timeout
    while not status_path.exists():
        for process in _started:
            process.poll()  # Reaps it, so that a dead one is seen as gone.
        if pid_path.exists() and not _alive(int(pid_path.read_text())):
            time.sleep(0.5)  # It may have written its status as it ended.
            if not status_path.exists():
                return "ended without a status", _log(folder, name)
        if time.monotonic() > deadline:
            return f"still running after {timeout} s", _log(folder, name)
        time.sleep(0.5)
    status = status_path.read_text().strip()
    return (int(status) if status.lstrip("-").isdigit() else status), _log(folder, name)


def _log(folder, name) -> str:
    with contextlib.suppress(OSError):
        return (folder / f"{name}.log").read_text(errors="replace")
    return ""


def _alive(pid) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stop_all(folder) -> None:
    """Kills the runs in `folder` that are still running (the run is ending)."""
    folder = pathlib.Path(folder)
    for pid_path in folder.glob("*.pid"):
        if pid_path.with_suffix(".status").exists():
            continue
        with contextlib.suppress(OSError, ValueError):
            os.killpg(int(pid_path.read_text()), signal.SIGKILL)
    for process in _started:
        with contextlib.suppress(OSError, subprocess.TimeoutExpired):
            process.wait(timeout=10)
