"""`keras-xception` for the docs test: each command runs in one warm process.

A command in the docs is what a user types in a shell, pipes and redirections
included, so the docs test runs each block in bash. Starting Python and
TensorFlow takes about 6 s of the ~10 s a short command takes on 2 CPUs, and
the docs hold some 30 commands; so `keras-xception` on the blocks' PATH is
`SHIM`, a few lines of standard-library Python that hand the command to
`CommandServer`, a process that has imported TensorFlow once for the pages
one pytest process runs (tests/test_docs.py, `page_processes`):

- the shim sends its arguments, its working folder and its environment, with
  its standard input, output and error themselves (file descriptors, over a
  Unix socket), so a redirection or a pipe works as it would;
- the server runs `keras_xception.cli.main` on them in its main thread, with
  that folder as its working folder, and replies with the exit status, which
  the shim exits with; after each command it resets Keras's globals and the
  random seeds as a new process has them (`fresh_globals`);
- `serve`, and any command run with an environment other than the server's
  (`KERAS_BACKEND=jax keras-xception ...`, a `TF_...` variable), replaces the
  shim with the installed `keras-xception` (the next one on PATH), as does
  every command when no server is running;
- the server ends when the pytest process that started it goes (its stdin
  closes).

What only a fresh process shows (start-up lines, the oneDNN a command turns
on, signals, exit at a closed stdout) is tested with real processes elsewhere
(`tests/commandline.py`).
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time

# Variables bash sets or changes on its own; the rest must equal the server's.
VOLATILE = ("PWD", "OLDPWD", "SHLVL", "_")
# Commands that never run in the server: `serve` runs until it is stopped.
OWN_PROCESS = ("serve",)
SOCKET_VARIABLE = "KERAS_XCEPTION_DOCS_CLI"

SHIM = '''\
#!{python} -IS
"""keras-xception for tests/test_docs.py: runs in the CommandServer (tests/docs_cli.py)."""
import json, os, socket, struct, sys

argv = sys.argv[1:]
path = os.environ.get("{variable}")
if path:
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.connect(path)
            request = json.dumps({{"argv": argv, "cwd": os.getcwd(),
                                  "env": dict(os.environ)}}).encode()
            socket.send_fds(conn, [struct.pack("!I", len(request)) + request], [0, 1, 2])
            reply = b""
            while chunk := conn.recv(65536):
                reply += chunk
        reply = json.loads(reply)
        if "status" in reply:
            sys.exit(reply["status"])
    except OSError:
        pass
# The installed command: the next keras-xception on PATH after this one.
here = os.path.dirname(os.path.abspath(__file__))
for folder in os.environ.get("PATH", "").split(os.pathsep):
    candidate = os.path.join(folder, "keras-xception")
    if folder and os.path.abspath(folder) != here and os.access(candidate, os.X_OK):
        os.execv(candidate, [candidate, *argv])
sys.exit("keras-xception is not installed (no keras-xception on PATH after the docs test's shim)")
'''


def write_shim(folder: pathlib.Path) -> pathlib.Path:
    """Writes `folder/keras-xception`; returns `folder`, to put first on PATH."""
    folder.mkdir(parents=True, exist_ok=True)
    shim = folder / "keras-xception"
    shim.write_text(SHIM.format(python=sys.executable, variable=SOCKET_VARIABLE))
    shim.chmod(0o755)
    return folder


def comparable(env) -> dict:
    return {k: v for k, v in env.items() if k not in VOLATILE and k != SOCKET_VARIABLE}


# --- the server process ------------------------------------------------------------


def _receive(conn):
    data, fds, _, _ = socket.recv_fds(conn, 1 << 20, 3)
    (length,) = struct.unpack("!I", data[:4])
    data = data[4:]
    while len(data) < length:
        chunk = conn.recv(1 << 20)
        if not chunk:
            raise ConnectionError("the shim went away")
        data += chunk
    return json.loads(data), fds


def _run(argv, cwd, fds) -> int:
    """`keras-xception ARGV` in this process, on the shim's streams and folder."""
    import io
    import traceback

    from tests import commandline

    streams = [io.TextIOWrapper(io.FileIO(fds[0], "r"), encoding="utf-8"),
               io.TextIOWrapper(io.FileIO(fds[1], "w"), encoding="utf-8"),
               io.TextIOWrapper(io.FileIO(fds[2], "w"), encoding="utf-8",
                                line_buffering=True)]
    saved = sys.stdin, sys.stdout, sys.stderr
    here = os.getcwd()
    try:
        os.chdir(cwd)
        sys.stdin, sys.stdout, sys.stderr = streams
        try:
            return commandline.in_process(argv)
        except Exception:  # A bug: its traceback, as a real process shows it.
            traceback.print_exc()
            return 1
    finally:
        sys.stdin, sys.stdout, sys.stderr = saved
        os.chdir(here)
        for stream in streams:
            try:
                stream.close()
            except OSError:  # A reader that has gone (`| head`).
                pass
        fresh_globals()


def fresh_globals() -> None:
    """Keras's global state and the random seeds as a new process has them.

    An empty Keras session (names, memory), float32 dtype policy and floatx,
    the default epsilon and image format; no TensorFlow global seed; Python's
    and NumPy's generators seeded afresh. The command server calls it after
    each command, the docs test's Python process before each page.
    """
    import gc
    import random

    keras = sys.modules.get("keras")  # What is not imported is as new.
    if keras is not None:
        keras.backend.clear_session(free_memory=False)
    # What the command left is freed now; what is left after that (modules it
    # imported, caches) is frozen, so that the next collections, this one
    # after the next command included, do not go through it again: each
    # took ~0.3 s of CPU otherwise. A caller drops what it no longer needs
    # first (the kernel's `restart`: the last page's namespace), or it is
    # kept for good.
    gc.collect()
    gc.freeze()
    if keras is not None:
        keras.config.set_dtype_policy("float32")
        keras.config.set_floatx("float32")
        keras.config.set_epsilon(1e-7)
        keras.config.set_image_data_format("channels_last")
    if "tensorflow" in sys.modules:
        sys.modules["tensorflow"].random.set_seed(None)
    if "numpy" in sys.modules:
        sys.modules["numpy"].random.seed()
    random.seed()


def serve(path) -> None:
    """The server's main loop (`python -m tests.docs_cli PATH`)."""
    from keras_xception import tfenv

    start = comparable(os.environ)  # What a command run here must be run with.

    def end_with_parent():  # stdin is the test's pipe: EOF when the test goes.
        sys.stdin.buffer.read()
        for name in (path, path + ".part", os.path.dirname(path)):
            try:
                (os.rmdir if name == os.path.dirname(path) else os.unlink)(name)
            except OSError:
                pass
        os._exit(0)

    threading.Thread(target=end_with_parent, daemon=True).start()
    tfenv.configure()  # As the command line does, before TensorFlow starts.
    import keras  # noqa: F401  The point: TensorFlow and Keras start once.

    from keras_xception import cli  # noqa: F401

    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(path + ".part")
        os.rename(path + ".part", path)  # Ready: the shim may connect.
        listener.listen()
        while True:
            conn, _ = listener.accept()
            with conn:
                request, fds = _receive(conn)
                if (comparable(request["env"]) != start
                        or request["argv"][:1] and request["argv"][0] in OWN_PROCESS):
                    for fd in fds:
                        os.close(fd)
                    conn.sendall(json.dumps({"exec": True}).encode())
                    continue
                status = _run(request["argv"], request["cwd"], fds)
                # The server's log (`CommandServer`'s `log_path`) lists each command it ran.
                print(f"ran {json.dumps(request['argv'])}: {status}", flush=True)
                conn.sendall(json.dumps({"status": status}).encode())


class CommandServer:
    """The server process; `env` gets the variable the shim reads."""

    def __init__(self, env, log_path, timeout=120):
        self.folder = tempfile.mkdtemp(prefix="kx-cli-")  # A short socket path.
        self.path = os.path.join(self.folder, "socket")
        self.log = open(log_path, "w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.docs_cli", self.path], env=env,
            stdin=subprocess.PIPE, stdout=self.log, stderr=self.log)
        deadline = time.monotonic() + timeout
        while not os.path.exists(self.path):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.close()
                raise RuntimeError(f"the command server did not start: see {log_path}")
            time.sleep(0.05)
        self.env = {**env, SOCKET_VARIABLE: self.path}

    def close(self):
        self.process.kill()
        self.process.wait(timeout=60)
        self.process.stdin.close()
        self.log.close()
        shutil.rmtree(self.folder, ignore_errors=True)


if __name__ == "__main__":
    serve(sys.argv[1])
