"""The Ray engine: decoding in Ray tasks, the model in a pool of actors that write.

Each model actor (`ShardWorker`, one model built from the `ModelSpec`) is
given whole shards, one after another:

1. it cuts the shard into batches and has each decoded by a Ray task on CPU
   (`decode_batch`, which calls `keras_xception.images.decode`, the one
   decoder of the package), `DECODE_AHEAD` batches in flight, anywhere in
   the cluster; the pixels travel as uint8 (the decoder's output is whole
   numbers in [0, 255], so this loses nothing and moves a quarter of the
   bytes) from the task to the actor through Ray's object store;
2. it computes the results of the readable images (`models.Predictor`);
3. it writes the shard itself, atomically under its stable name
   (`sink.write_shard`), which is what makes a killed run resumable;
4. it returns a `ShardDone` to the driver: the shard's index, its row count
   and its unreadable inputs (path and reason), never its results.

So the driver hands out shards and collects small reports; the results go
from the actor that computed them straight to the output folder, which on
a cluster must therefore be one folder every node sees at the same path (a
shared file system). There is one actor per GPU when the cluster has GPUs
(each actor gets one), else one per `CPUS_PER_ACTOR` CPUs of the cluster,
at least one; each has up to `SHARDS_PER_ACTOR` shards queued so it never
waits for the driver. A dead actor is restarted, and its shard retried,
`ACTOR_RESTARTS` times; a shard written twice is written identically.

Embedded (no address), Ray is started on this machine listening on
127.0.0.1 only: one machine has no reason to open Ray's unauthenticated
ports to its network. The environment variables that decide TensorFlow's
kernels (`TF_ENABLE_ONEDNN_OPTS`) and logging are passed to the workers, so
the actors compute what this process would.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import logging
import os

import numpy as np

# CPUs of the cluster per model actor when there is no GPU; the rest decode.
CPUS_PER_ACTOR = 4

# The embedded Ray's object store: a few batches of uint8 images in flight.
OBJECT_STORE_BYTES = 512 * 1024 * 1024

# CPUs each decoding task reserves.
DECODE_CPUS = 0.5

# Batches each actor has being decoded ahead of its model.
DECODE_AHEAD = 8

# Shards given to each actor at a time: the next one is queued while it
# computes the current one.
SHARDS_PER_ACTOR = 2

LOOPBACK = "127.0.0.1"

_PASSED_ENV = ("TF_ENABLE_ONEDNN_OPTS", "TF_CPP_MIN_LOG_LEVEL", "KERAS_BACKEND",
               "KERAS_HOME", "KERAS_XCEPTION_MAX_PIXELS")

# How often a dead model actor is restarted, and its shard retried, before
# the job fails.
ACTOR_RESTARTS = 2


def decode_batch(paths, *, size, max_pixels) -> dict:
    """Decodes a batch of paths (a Ray task).

    Returns:
        `{"paths": [...], "images": uint8 (n, height, width, 3), "errors":
        [(path, reason), ...]}`: the readable images and their paths, in
        order, and why each other one cannot be read.
    """
    from keras_xception.checks import lift_pillow_limit
    from keras_xception.errors import ImageError
    from keras_xception.images import decode

    lift_pillow_limit()  # decode applies max_pixels itself.
    images = np.zeros((len(paths), size[0], size[1], 3), np.uint8)
    ok, errors = [], []
    for path in paths:
        try:
            images[len(ok)] = decode(path, size, max_pixels=max_pixels)
        except ImageError as err:
            errors.append((path, str(err)))
        else:
            ok.append(path)
    return {"paths": ok, "images": images[: len(ok)], "errors": errors}


@dataclasses.dataclass(frozen=True)
class ShardDone:
    """What a model actor tells the driver about a shard it wrote.

    Attributes:
        index: The shard's index.
        rows: Result rows written (readable images).
        errors: The shard's unreadable inputs, `(path, reason)` pairs.
    """

    index: int
    rows: int
    errors: tuple = ()


class ShardWorker:
    """A Ray actor holding one model: computes whole shards and writes them.

    Args:
        spec: The `models.ModelSpec`.
        output: The output folder, as `sink.Sink.open` prepared it.
        batch_size: Images per decoding task and per forward pass.
        max_pixels: The pixel limit for `images.decode`.
    """

    def __init__(self, spec, output, batch_size, max_pixels):
        import ray

        from keras_xception import tfenv
        from keras_xception.batch.models import Predictor

        tfenv.install()  # This worker's first import of Keras, as the command line's.

        self.spec, self.output = spec, output
        self.batch_size, self.max_pixels = batch_size, max_pixels
        self.predictor = Predictor(spec)
        self.decode = ray.remote(num_cpus=DECODE_CPUS)(decode_batch)

    def process(self, shard) -> ShardDone:
        """Computes and writes `shard`; returns its `ShardDone`."""
        import ray

        from keras_xception.batch import local_engine, sink
        from keras_xception.batch.models import empty_columns, result_table

        if not (sink.error_path(self.output, shard).parent).is_dir():
            from keras_xception.errors import ConfigError

            raise ConfigError(
                f"the Ray worker on {ray.util.get_node_ip_address()} does not see "
                f"--output {str(self.output)!r}: on a cluster, the workers write the "
                "results themselves, so --output must be a folder every node sees "
                "at the same path (a shared file system)"
            )
        size = self.predictor.image_size
        chunks = collections.deque(
            shard.paths[i:i + self.batch_size]
            for i in range(0, len(shard.paths), self.batch_size))
        ahead = collections.deque()
        parts, paths, errors = [], [], []
        while chunks or ahead:
            while chunks and len(ahead) < DECODE_AHEAD:
                ahead.append(self.decode.remote(chunks.popleft(), size=size,
                                                max_pixels=self.max_pixels))
            batch = ray.get(ahead.popleft())
            errors.extend(batch["errors"])
            if len(batch["paths"]):
                parts.append(self.predictor(batch["images"].astype(np.float32)))
                paths.extend(batch["paths"])
        columns = (local_engine.concatenate(parts) if parts
                   else empty_columns(self.spec.kind, self.spec.top))
        table = result_table(self.spec.kind, paths, columns)
        sink.write_shard(self.output, shard, table, errors)
        return ShardDone(shard.index, table.num_rows, tuple(errors))


def _env_vars():
    return {k: os.environ[k] for k in _PASSED_ENV if k in os.environ}


# Ray's switch (read once, when Ray is imported) for keeping a node's address
# 127.0.0.1 instead of swapping in the machine's network address.
_CLUSTER_SWITCH = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


@contextlib.contextmanager
def _loopback_only(embedded):
    """While Ray starts embedded: every process it starts stays on 127.0.0.1.

    Ray replaces 127.0.0.1 with the machine's network address unless
    RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, which Ray reads when it is
    imported: in the processes it starts (so the variable is set while they
    start) and in this one (where Ray may have been imported already, so
    its copy of the switch is set too). Both are restored afterwards.
    """
    if not embedded:
        yield
        return
    try:  # Ray's own copy of the switch; a private module, so maybe absent.
        from ray._private import ray_constants
    except ImportError:
        ray_constants = None
    saved_env = os.environ.get(_CLUSTER_SWITCH)
    saved = getattr(ray_constants, "ENABLE_RAY_CLUSTER", None)
    os.environ[_CLUSTER_SWITCH] = "0"
    if saved is not None:
        ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        if saved_env is None:
            os.environ.pop(_CLUSTER_SWITCH, None)
        else:
            os.environ[_CLUSTER_SWITCH] = saved_env
        if saved is not None:
            ray_constants.ENABLE_RAY_CLUSTER = saved


ADDRESS_FORMS = "auto, HOST:PORT or ray://HOST:PORT"


def cluster_address(address):
    """The Ray cluster a job uses, or `None` for Ray embedded on this machine.

    `address` when given, else `RAY_ADDRESS` (which Ray sets for a job
    submitted to a cluster); `"local"`, Ray's word for a new instance on this
    machine, means embedded.
    """
    address = address or os.environ.get("RAY_ADDRESS") or None
    return None if address == "local" else address

# Seconds to wait for a cluster's port to answer before giving up.
CONNECT_TIMEOUT = 5.0


def check_address(address):
    """Checks that something answers at a Ray cluster's address, quickly.

    Ray itself retries an unreachable address for minutes; this fails in
    `CONNECT_TIMEOUT` seconds instead, before any output is written. The
    address is resolved as `connected` does (`cluster_address`); embedded
    Ray and `"auto"` are left to Ray.

    Raises:
        ConfigError: If `address` is not of the forms Ray takes, or nothing
            accepts a connection there.
    """
    import socket

    from keras_xception.errors import ConfigError

    address = cluster_address(address)
    if address in (None, "auto"):
        return
    scheme, sep, rest = address.partition("://")
    if not sep:
        scheme, rest = "", address
    host, colon, port = rest.rpartition(":")
    host = host.strip("[]")
    if scheme not in ("", "ray") or not colon or not host or not port.isdigit() \
            or not 0 < int(port) < 65536:
        raise ConfigError(
            f"--address must be {ADDRESS_FORMS}. Received: --address {address!r}"
        )
    try:
        socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT).close()
    except OSError as err:
        reason = err.strerror or str(err) or type(err).__name__
        raise ConfigError(
            f"cannot reach the Ray cluster at {address!r} ({reason}): start it, "
            "or check the address and that this machine can reach it"
        ) from None


@contextlib.contextmanager
def connected(address=None, ray_options=None):
    """Ray, connected for the duration of the block.

    Uses the Ray this process is already connected to, else connects to
    the cluster `cluster_address(address)` names, else starts Ray embedded on
    127.0.0.1, never joining a cluster `ray start` left on the machine;
    shuts down only what it started.
    """
    import ray

    if ray.is_initialized():
        yield ray
        return
    options = {
        "log_to_driver": False,
        "logging_level": logging.ERROR,
        "runtime_env": {"env_vars": _env_vars()},
    }
    address = cluster_address(address)
    if address:
        options["address"] = address
    else:
        options.update(
            # "local": a new Ray of this process's own, even where `ray start`
            # left a cluster that `ray.init()` would otherwise join.
            address="local",
            _node_ip_address=LOOPBACK,
            include_dashboard=False,
            object_store_memory=OBJECT_STORE_BYTES,
        )
    options.update(ray_options or {})
    with _loopback_only(embedded=not address):
        try:
            ray.init(**options)
        except (ConnectionError, ValueError, TimeoutError) as err:
            from keras_xception.errors import ConfigError

            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ConfigError(
                f"cannot connect to Ray at {address or 'this machine'!r}: {first}"
            ) from None
    try:
        yield ray
    finally:
        ray.shutdown()


def actor_plan(resources) -> dict:
    """How many model actors to run and what each reserves.

    Args:
        resources: `ray.cluster_resources()`.

    Returns:
        `{"size": n, "num_cpus": c, "num_gpus": g}`: `n` actors, each
        reserving `c` CPUs and `g` GPUs.
    """
    gpus = int(resources.get("GPU", 0))
    if gpus:
        return {"size": gpus, "num_cpus": 1, "num_gpus": 1}
    cpus = int(resources.get("CPU", 1))
    return {"size": max(1, cpus // CPUS_PER_ACTOR), "num_cpus": 1, "num_gpus": 0}


def run(shards, spec, *, batch_size, max_pixels, output, on_shard, progress,
        address=None, ray_options=None):
    """Processes `shards` on Ray; see `local_engine.run` for the arguments.

    The driver (this process) only hands shards to the actors and receives
    their `ShardDone`s; the actors write the results.

    Args:
        address: The Ray cluster, or `None` to start Ray on this machine.
        ray_options: More keyword arguments for `ray.init`.

    Raises:
        ConfigError: If a worker cannot see `output`.
    """
    from keras_xception.errors import ConfigError

    with connected(address, ray_options) as ray:
        plan = actor_plan(ray.cluster_resources())
        worker = ray.remote(ShardWorker).options(
            num_cpus=plan["num_cpus"], num_gpus=plan["num_gpus"] or None,
            # Without a bound, an actor killed on every start (out of
            # memory, say) would hang the job; bounded, the job fails with
            # Ray's error instead, and the shards written so far are kept.
            max_restarts=ACTOR_RESTARTS, max_task_retries=ACTOR_RESTARTS,
        )
        actors = [worker.remote(spec, output, batch_size, max_pixels)
                  for _ in range(plan["size"])]
        todo = collections.deque(shards)
        running = {}

        def give(actor):
            if todo:
                shard = todo.popleft()
                running[actor.process.remote(shard)] = (actor, shard)

        for _ in range(SHARDS_PER_ACTOR):
            for actor in actors:
                give(actor)
        while running:
            (ref,), _ = ray.wait(list(running), num_returns=1)
            actor, shard = running.pop(ref)
            try:
                done = ray.get(ref)
            except ray.exceptions.RayTaskError as err:
                if isinstance(err.cause, ConfigError):
                    raise ConfigError(str(err.cause)) from None
                raise
            progress.update(len(shard.paths))
            on_shard(shard, done.errors)
            give(actor)
