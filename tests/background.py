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
`NAME.started` (made by the one process that starts it), `NAME.lock` (held
by its launcher for as long as the launcher lives), `NAME.pid` (the
launcher's, which leads the run's process group), `NAME.log` (the output)
and `NAME.status` (the exit status, or why there is none). The launcher
(`LAUNCHER`) lowers its own priority and makes its own process group before
it starts the command, in the same session (so that the kernel's
per-session grouping does not give the run a share of its own), and writes
the status itself: the test waits for it whichever pytest process started
the run and whether or not that process is still there, and sees a
launcher that died without a status at once (its lock is free). The
launcher stops the run's whole group (SIGINT, so that pytest tears down,
then SIGKILL) at its time limit, on SIGTERM (sent by `stop_all` when the
run's first pytest process ends), and when that process or the shared
folder is gone, so that no run outlives the session.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pathlib
import signal
import subprocess
import sys
import time

LAUNCHER = r"""
import fcntl, os, signal, subprocess, sys, time
folder, name, timeout, niceness, owner = (sys.argv[1], sys.argv[2], float(sys.argv[3]),
                                          int(sys.argv[4]), int(sys.argv[5]))
base = os.path.join(folder, name)
lock = open(base + ".lock", "w")
fcntl.flock(lock, fcntl.LOCK_EX)  # Held until this process ends.
os.setpgid(0, 0)
if hasattr(os, "setpriority"):
    os.setpriority(os.PRIO_PROCESS, 0, niceness)


def publish(suffix, text):
    with open(base + suffix + ".tmp", "w") as f:
        f.write(text + "\n")
    os.replace(base + suffix + ".tmp", base + suffix)


stop = []
signal.signal(signal.SIGTERM, lambda *_: stop.append("stopped (SIGTERM)"))
signal.signal(signal.SIGINT, lambda *_: None)  # The group's SIGINT is for the run.
publish(".pid", str(os.getpid()))


def owner_gone():
    if not os.path.isdir(folder):
        return True
    try:
        os.kill(owner, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass
    return False


with open(base + ".log", "w") as log:
    run = subprocess.Popen(sys.argv[6:], stdin=subprocess.DEVNULL, stdout=log,
                           stderr=subprocess.STDOUT)
    deadline = time.monotonic() + timeout
    while run.poll() is None:
        if not stop and time.monotonic() > deadline:
            stop.append("timeout")
        if not stop and owner_gone():
            stop.append("stopped (the session ended)")
        if stop:
            os.killpg(0, signal.SIGINT)  # pytest tears down on Ctrl-C.
            try:
                run.wait(15)
            except subprocess.TimeoutExpired:
                pass
            if stop[0] == "timeout" and os.path.isdir(folder):
                publish(".status", stop[0])
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.killpg(0, signal.SIGKILL)  # What is left of the group, this process too.
        time.sleep(1)
publish(".status", str(run.returncode))
"""
TIMEOUT_S = 1800  # from the start, starved time included; the test waits a minute more
# Unix's priority for the runs (0 normal, 19 lowest). At 19 they get little
# but the time the workers leave idle. At 10 (about a twentieth of a CPU
# beside two busy workers, on top of that) the tests that start Ray took two
# to three times as long, and the suite was no shorter: docs/benchmarks.md,
# "The test suite".
NICENESS = 19
# The pytest process that made the shared folder (tests/conftest.py sets it):
# a run stops when it is gone.
OWNER_VARIABLE = "KERAS_XCEPTION_TEST_OWNER"


# The run's shared folder (tests/conftest.py makes it and sets the variable).
SHARED_VARIABLE = "KERAS_XCEPTION_TEST_SHARED"


def _folder() -> pathlib.Path:
    return pathlib.Path(os.environ[SHARED_VARIABLE])


def in_parts(name, command, parts):
    """One `pytest.param` per part, marked `background(f"{name}_{part}", ...)`
    with `command(part)`: a rerun split into processes that run side by side."""
    import functools

    import pytest

    return [pytest.param(part, marks=pytest.mark.background(
                f"{name}_{part}", functools.partial(command, part)))
            for part in parts]


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
    owner = os.environ.get(OWNER_VARIABLE, str(os.getpid()))
    try:
        process = subprocess.Popen(
            [sys.executable, "-c", LAUNCHER, str(folder), name, str(TIMEOUT_S),
             str(NICENESS), owner, *argv],
            env=env, cwd=cwd, stdin=subprocess.DEVNULL)
    except OSError as err:
        (folder / f"{name}.status").write_text(f"could not start: {err}\n")
        return False
    _started.append(process)  # Reaped when this process next looks (`result`).
    return True


_started: list[subprocess.Popen] = []


def result(name, command, timeout=TIMEOUT_S + 60):
    """`(status, output)` of the run `name`: started here if no process of this
    run has started it, then waited for. `status` is the exit status (an
    int), or a string saying why there is none."""
    folder = _folder()
    start(name, command)
    status_path = folder / f"{name}.status"
    deadline = time.monotonic() + timeout
    while not status_path.exists():
        for process in _started:
            process.poll()
        if (folder / f"{name}.pid").exists() and not _held(folder / f"{name}.lock"):
            if not status_path.exists():  # The launcher has ended: no status will come.
                return "ended without a status", _log(folder, name)
        if time.monotonic() > deadline:
            return f"still running after {timeout} s", _log(folder, name)
        time.sleep(0.5)
    status = status_path.read_text().strip()
    return (int(status) if status.lstrip("-").isdigit() else status), _log(folder, name)


def last_summary(output) -> str:
    """pytest's last summary line in a run's output ("... passed ... in ..."),
    or "" where it printed none."""
    lines = [line for line in output.splitlines() if " in " in line and "passed" in line]
    return lines[-1] if lines else ""


def _held(path) -> bool:
    """Whether a process holds the lock on `path` (the launcher, while it lives)."""
    with open(path, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(f, fcntl.LOCK_UN)
        return False


def _log(folder, name) -> str:
    with contextlib.suppress(OSError):
        return (folder / f"{name}.log").read_text(errors="replace")
    return ""


def stop_all(folder) -> None:
    """Asks the runs in `folder` still going to stop (the session is ending);
    each launcher stops its group (`LAUNCHER`)."""
    folder = pathlib.Path(folder)
    for pid_path in folder.glob("*.pid"):
        if pid_path.with_suffix(".status").exists():
            continue
        with contextlib.suppress(OSError, ValueError):
            os.kill(int(pid_path.read_text()), signal.SIGTERM)
    for process in _started:
        with contextlib.suppress(OSError, subprocess.TimeoutExpired):
            process.wait(timeout=30)
