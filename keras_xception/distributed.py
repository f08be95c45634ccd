"""Distribution strategies for training, and local multi-worker launches.

Three strategies, by name (`--strategy`):

- `default`: one device, no `tf.distribute` (works on every Keras backend);
- `mirrored`: `tf.distribute.MirroredStrategy` over the GPUs of this host
  (synchronous data parallelism; the batch size is the global batch);
- `multiworker`: `tf.distribute.MultiWorkerMirroredStrategy` across
  processes, usually one per host, configured by the `TF_CONFIG`
  environment variable of each process.

`launch_local_workers` starts N worker processes on this machine, each with
a `TF_CONFIG` that points the cluster at free loopback ports
(`127.0.0.1` only, nothing listens on other interfaces), so multi-worker
training can be tried without a cluster.

Workers save as the TensorFlow multi-worker guide describes: every worker
calls `save`, the chief (task `chief`, or worker 0 when the cluster has no
chief) to the real path and the others to temporary folders that are then
deleted. Weight downloads with several workers on one host go through
`keras_xception.weights`' file lock, so each file is fetched once.

This module imports TensorFlow only inside the functions that need it.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

from keras_xception.errors import ConfigError, XceptionError

STRATEGIES = ("default", "mirrored", "multiworker")

# Lines of a failed worker's output repeated in the error message.
TAIL_LINES = 15


def tf_config():
    """The parsed `TF_CONFIG`, or `None` when it is unset or empty."""
    raw = os.environ.get("TF_CONFIG", "").strip()
    if not raw:
        return None
    try:
        config = json.loads(raw)
        cluster = config["cluster"]
        task = config["task"]
        task["type"], int(task["index"])
    except (ValueError, KeyError, TypeError) as err:
        raise ConfigError(
            "TF_CONFIG must be JSON with `cluster` and `task` (type and index), "
            f'e.g. {{"cluster": {{"worker": ["host1:12345", "host2:12345"]}}, '
            f'"task": {{"type": "worker", "index": 0}}}}. Problem: {err!r}. '
            f"Received: TF_CONFIG={raw!r}"
        ) from None
    if not isinstance(cluster, dict) or not cluster:
        raise ConfigError(
            f"TF_CONFIG has an empty `cluster`. Received: TF_CONFIG={raw!r}"
        )
    return config


def cluster_size(config=None) -> int:
    """Number of training tasks (chief and workers) in `TF_CONFIG`."""
    config = config or tf_config()
    if config is None:
        return 1
    return sum(len(config["cluster"].get(kind, [])) for kind in ("chief", "worker"))


def task_id(config=None) -> tuple[str, int]:
    """This process's `(task type, index)`; `("worker", 0)` without `TF_CONFIG`."""
    config = config or tf_config()
    if config is None:
        return "worker", 0
    return config["task"]["type"], int(config["task"]["index"])


def is_chief(config=None) -> bool:
    """Whether this process writes the real outputs: the chief, or worker 0."""
    config = config or tf_config()
    if config is None:
        return True
    kind, index = task_id(config)
    if kind == "chief":
        return True
    return kind == "worker" and index == 0 and not config["cluster"].get("chief")


def worker_dir(root, config=None) -> str:
    """Where this process keeps its own run state under `root`.

    The chief uses `root`; any other worker `root/worker-<index>`, so
    workers sharing a disk never write the same file.
    """
    root = os.fspath(root)
    if is_chief(config):
        return root
    kind, index = task_id(config)
    return os.path.join(root, f"{kind}-{index}")


def get_strategy(name="default"):
    """Returns the strategy for `name`, or `None` for `"default"`.

    Raises:
        keras_xception.errors.ConfigError: For an unknown name, a
            `tf.distribute` strategy on a backend other than TensorFlow, or
            `multiworker` without a `TF_CONFIG`.
    """
    if name not in STRATEGIES:
        raise ConfigError(
            f"Unknown strategy {name!r}; expected one of {', '.join(STRATEGIES)}. "
            f"Received: strategy={name!r}"
        )
    if name == "default":
        return None
    import keras

    if keras.backend.backend() != "tensorflow":
        raise ConfigError(
            f"--strategy {name} uses tf.distribute and needs the TensorFlow "
            f"backend; this process runs Keras on {keras.backend.backend()!r} "
            "(set KERAS_BACKEND=tensorflow)."
        )
    import tensorflow as tf

    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if tf_config() is None:
        raise ConfigError(
            "--strategy multiworker needs TF_CONFIG describing the cluster "
            "(one process per host), or --workers N to start N local workers."
        )
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    _patch_keras_for_multiworker()
    return strategy


def strategy_scope(strategy):
    """`strategy.scope()`, or a no-op for the default strategy (`None`)."""
    return strategy.scope() if strategy is not None else contextlib.nullcontext()


def replicas(strategy) -> int:
    return 1 if strategy is None else int(strategy.num_replicas_in_sync)


_PATCHED = False


def _patch_keras_for_multiworker():
    """Works around Keras 3's `fit` under `MultiWorkerMirroredStrategy`.

    Keras 3.15's TensorFlow trainer fails there in two places
    (keras-team/keras#20585): before the first step it calls
    `strategy.reduce` on a whole `(x, y)` batch only to learn its shapes,
    which the collective ops reject; and it averages each step's scalar
    metrics with `strategy.reduce("MEAN", v, axis=0)`, an axis a scalar
    does not have. The fix takes the local replica's batch for the shapes
    and averages the scalars across workers with `axis=None`. Applied once,
    only in processes that create a `MultiWorkerMirroredStrategy`.
    """
    global _PATCHED
    if _PATCHED:
        return
    import tensorflow as tf
    from keras.src import tree
    from keras.src.backend.tensorflow import trainer as tf_trainer

    if not (
        hasattr(tf_trainer, "reduce_per_replica")
        and hasattr(tf_trainer, "_collective_all_reduce_multi_worker")
        and hasattr(tf_trainer.TensorFlowTrainer, "_maybe_symbolic_build")
    ):
        return  # a Keras whose trainer no longer has these parts
    original_reduce = tf_trainer.reduce_per_replica

    def reduce_per_replica(values, strategy, reduction):
        multi_worker = tf_trainer._collective_all_reduce_multi_worker(strategy)
        if multi_worker and reduction in ("auto", "mean"):
            return tree.map_structure(
                lambda v: strategy.reduce("MEAN", v, axis=None), values
            )
        return original_reduce(values, strategy, reduction)

    def local(strategy, value):
        if isinstance(value, tf.distribute.DistributedValues):
            return strategy.experimental_local_results(value)[0]
        return value

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        if self._distribute_strategy is None:
            return
        if iterator is not None:
            for _, _, it in iterator:
                batch = next(it)
                data_batch = tree.map_structure(
                    lambda v: local(self.distribute_strategy, v), batch
                )
                break
        with self.distribute_strategy.scope():
            self._symbolic_build(data_batch=data_batch)

    tf_trainer.reduce_per_replica = reduce_per_replica
    tf_trainer.TensorFlowTrainer._maybe_symbolic_build = _maybe_symbolic_build
    _PATCHED = True


def save_model(save, path, config=None):
    """Calls `save(target)` on every worker; only the chief's lands at `path`.

    Non-chief workers save into a temporary folder that is deleted
    afterwards, as the TensorFlow multi-worker guide prescribes (saving may
    need every worker to take part).
    """
    if is_chief(config):
        save(path)
        return
    with tempfile.TemporaryDirectory(prefix="keras-xception-worker-") as tmp:
        save(os.path.join(tmp, os.path.basename(os.fspath(path))))


# --- local launch -----------------------------------------------------------


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


def _pump(pipe, sink, tail):
    for line in iter(pipe.readline, ""):
        tail.append(line.rstrip("\n"))
        if sink is not None:
            sink.write(line)
            sink.flush()
    pipe.close()


def launch_local_workers(command, count, *, env=None, timeout=None, stream=None):
    """Runs `command` as `count` local workers and waits for all of them.

    Each worker gets the same command and its own `TF_CONFIG`. Worker 0 is
    the chief; its output is passed through (to `stream`, or this
    process's stdout and stderr); the others' output is kept and shown only
    if they fail. When one worker fails, the others (which would wait for
    it forever) are stopped.

    Args:
        command: The worker's argv, e.g. `[sys.executable, "-m",
            "keras_xception.cli", "fine-tune", ...]`.
        count: Number of workers, 1 or more.
        env: Base environment (defaults to this process's).
        timeout: Seconds to wait for all workers; `None` waits forever.
        stream: Where the chief's output goes; `None` for stdout/stderr.

    Raises:
        keras_xception.errors.ConfigError: If `count` is not a positive
            integer.
        keras_xception.errors.XceptionError: If a worker fails or the
            launch times out; the message names the worker, its exit status
            and the end of its output.
    """
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ConfigError(
            f"--workers must be a positive integer. Received: workers={count!r}"
        )
    base_env = dict(os.environ if env is None else env)
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
                bufsize=1,
            )
            tail = collections.deque(maxlen=200)
            chief = index == 0
            for pipe, sink in (
                (proc.stdout, (stream or sys.stdout) if chief else None),
                (proc.stderr, (stream or sys.stderr) if chief else None),
            ):
                pump = threading.Thread(
                    target=_pump, args=(pipe, sink, tail), daemon=True
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
            lines = list(tails[failed])[-TAIL_LINES:]
            raise XceptionError(
                f"Worker {failed} of {count} failed with exit status "
                f"{procs[failed].returncode}; the others were stopped. Its last "
                "output:\n" + "\n".join(f"  {line}" for line in lines)
            )
    finally:
        _stop(procs)
        for pump in pumps:
            pump.join(timeout=5)


def _stop(procs):
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
