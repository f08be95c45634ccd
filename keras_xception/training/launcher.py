"""Starting N local workers for multi-worker training, and ending them all.

`launch_local_workers` starts N worker processes on this machine, each with
a `TF_CONFIG` that points the cluster at free loopback ports
(`127.0.0.1` only, nothing listens on other interfaces), so multi-worker
training can be tried without a cluster. Each worker runs the same command
(the user's own arguments, unchanged).

No process is left behind: when a worker fails, the launcher stops the
others (which would otherwise wait for it forever); a timeout bounds the
whole launch; and each worker watches its launcher (`watch_launcher`) and
exits if the launcher dies, even by SIGKILL.
"""

from __future__ import annotations

import collections
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

from keras_xception.checks import positive_int
from keras_xception.errors import XceptionError

# Set in each worker's environment to the launcher's process id.
LAUNCHER_PID_ENV = "KERAS_XCEPTION_LAUNCHER_PID"

# Seconds between a worker's checks that its launcher is alive.
WATCH_INTERVAL = 1.0

def free_ports(count, host="127.0.0.1"):
    """`count` distinct TCP ports free on `host` right now.

    The sockets are closed before the workers bind, so another program
    could take a port in between; the launch then fails with the worker's
    error and can simply be retried.
    """
    sockets, ports = [], []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind((host, 0))
            sockets.append(sock)
            ports.append(sock.getsockname()[1])
    finally:
        for sock in sockets:
            sock.close()
    return ports


def local_tf_configs(count, host="127.0.0.1"):
    """The `TF_CONFIG` of each of `count` local workers on free ports."""
    addresses = [f"{host}:{port}" for port in free_ports(count, host)]
    return [
        {"cluster": {"worker": addresses}, "task": {"type": "worker", "index": i}}
        for i in range(count)
    ]


class WorkerFailed(XceptionError):
    """A local worker failed; the others were stopped.

    Attributes:
        index: The worker's index.
        returncode: Its exit status.
        reported: Whether its own one-line error already reached stderr
            (the chief's output is passed through).
    """

    def __init__(self, message, index=None, returncode=None, reported=False):
        super().__init__(message)
        self.index = index
        self.returncode = returncode
        self.reported = reported


def _pump(pipe, sink, tail, prefix=None):
    """Copies `pipe` to `sink` (all lines) or, with `prefix`, only its warnings."""
    for line in iter(pipe.readline, ""):
        tail.append(line.rstrip("\n"))
        if sink is None:
            continue
        if prefix is None:
            sink.write(line)
        elif line.startswith("warning:"):
            sink.write(f"{prefix}{line}")
        else:
            continue
        sink.flush()
    pipe.close()


def _last_error(lines) -> str:
    """The worker's own error line, else its last line of output."""
    errors = [line for line in lines if line.startswith("error:")]
    if errors:
        return errors[-1][len("error:"):].strip()
    lines = [line.strip() for line in lines if line.strip()]
    return lines[-1] if lines else "no output"


def launch_local_workers(command, count, *, env=None, timeout=None, stream=None):
    """Runs `command` as `count` local workers and waits for all of them.

    Each worker gets the same command and its own `TF_CONFIG`. Worker 0 is
    the chief; its output is passed through (to `stream`, or this
    process's stdout and stderr). The others' warnings (lines starting
    with `warning:`) are passed to stderr with a `[worker N]` prefix; the
    rest of their output is kept and its last error shown only if they
    fail. When one worker fails, the others (which would wait for it
    forever) are stopped.

    Args:
        command: The worker's argv, e.g. `[sys.executable, "-m",
            "keras_xception.cli", "fine-tune", ...]`.
        count: Number of workers, 1 or more.
        env: Base environment (defaults to this process's).
        timeout: Seconds to wait for all workers; `None` waits until they
            end (each ends if another fails, see the module docstring).
        stream: Where the chief's output goes; `None` for stdout/stderr.

    Raises:
        keras_xception.errors.ConfigError: If `count` is not a positive
            integer.
        WorkerFailed: If a worker fails; the one-line message names the
            worker, its exit status and its last error.
        keras_xception.errors.XceptionError: If the launch times out.
    """
    count = positive_int(count, "--workers")
    base_env = dict(os.environ if env is None else env)
    base_env[LAUNCHER_PID_ENV] = str(os.getpid())
    procs, tails, pumps = [], [], []
    try:
        for index, config in enumerate(local_tf_configs(count)):
            worker_env = dict(base_env, TF_CONFIG=json.dumps(config))
            proc = subprocess.Popen(
                command,
                env=worker_env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                stdin=subprocess.DEVNULL,
                text=True,
                errors="backslashreplace",
                bufsize=1,
            )
            tail = collections.deque(maxlen=200)
            chief = index == 0
            err_sink = stream or sys.stderr
            for pipe, sink, prefix in (
                (proc.stdout, (stream or sys.stdout) if chief else None, None),
                (proc.stderr, err_sink, None if chief else f"[worker {index}] "),
            ):
                pump = threading.Thread(
                    target=_pump, args=(pipe, sink, tail, prefix), daemon=True
                )
                pump.start()
                pumps.append(pump)
            procs.append(proc)
            tails.append(tail)
        deadline = None if timeout is None else time.monotonic() + timeout
        failed = None
        while failed is None and any(p.poll() is None for p in procs):
            failed = next(
                (i for i, p in enumerate(procs) if p.poll() not in (None, 0)), None
            )
            if deadline is not None and time.monotonic() > deadline:
                raise XceptionError(
                    f"The {count} local workers did not finish within {timeout:.0f}s; stopped them."
                )
            time.sleep(0.2)
        if failed is None:
            failed = next((i for i, p in enumerate(procs) if p.returncode != 0), None)
        if failed is not None:
            _stop(procs)
            for pump in pumps:
                pump.join(timeout=5)
            code = procs[failed].returncode
            why = _last_error(list(tails[failed]))
            raise WorkerFailed(
                f"Worker {failed} of {count} failed with exit status {code}: {why} "
                "(the others were stopped).",
                index=failed,
                returncode=code,
                reported=failed == 0 and code == 1,
            )
    finally:
        _stop(procs)
        for pump in pumps:
            pump.join(timeout=5)


def watch_launcher(interval=WATCH_INTERVAL):
    """In a worker started by `launch_local_workers`: exit when the launcher dies.

    Starts a daemon thread that checks every `interval` seconds whether this
    process's parent is still the launcher named in its environment; if not
    (the launcher was killed, and the worker was handed to another parent),
    it prints one line on stderr and ends the process at once. Does nothing
    in a process that no launcher started.
    """
    pid = os.environ.get(LAUNCHER_PID_ENV)
    if not pid or not pid.isdigit():
        return

    def watch():
        while os.getppid() == int(pid):
            time.sleep(interval)
        print("error: the launcher of this worker has exited; stopping.", file=sys.stderr, flush=True)
        os._exit(1)

    threading.Thread(target=watch, name="watch-launcher", daemon=True).start()


def _stop(procs):
    """Ends every process still running: SIGTERM, then SIGKILL after 10 s."""
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
