"""The Ray Data engine: decoding in Ray tasks, the model in a pool of actors.

The pipeline, all Ray Data operators:

1. `from_items`: one row per input path (its bytes) and its shard;
2. `map_batches(decode_batch)`: Ray tasks on CPU call
   `keras_xception.images.decode` (the one decoder of the package) and emit
   uint8 pixels (the decoder's output is whole numbers in [0, 255], so this
   loses nothing and moves a quarter of the bytes) and the reason for each
   image that cannot be read;
3. `map_batches(ModelActor)`: a pool of actors, each holding one model
   (`models.Predictor`), computes the results; one actor per GPU when the
   cluster has GPUs (each actor gets one), else one per `CPUS_PER_ACTOR`
   CPUs of the cluster, at least one;
4. the results stream back to this process in input order
   (`preserve_order`), and each shard is handed to the sink as soon as all
   its rows have arrived: the sink writes it atomically under its stable
   name, which is what makes a killed run resumable. Ray Data's own
   `write_parquet` names files after the dataset's blocks, which differ from
   run to run, so it cannot tell a rerun what is already done.

Embedded (no address), Ray is started on this machine listening on
127.0.0.1 only: one machine has no reason to open Ray's unauthenticated
ports to its network. The environment variables that decide TensorFlow's
kernels (`TF_ENABLE_ONEDNN_OPTS`) and logging are passed to the workers, so
the actors compute what this process would.
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings

import numpy as np

# CPUs of the cluster per model actor when there is no GPU; the rest decode.
CPUS_PER_ACTOR = 4

# The embedded Ray's object store: a few batches of uint8 images in flight.
OBJECT_STORE_BYTES = 512 * 1024 * 1024

# CPUs each decoding task reserves.
DECODE_CPUS = 0.5

LOOPBACK = "127.0.0.1"

_PASSED_ENV = ("TF_ENABLE_ONEDNN_OPTS", "TF_CPP_MIN_LOG_LEVEL", "KERAS_BACKEND",
               "KERAS_HOME", "KERAS_XCEPTION_MAX_PIXELS")



# How often a dead model actor is restarted, and its batch retried, before
# the job fails.
ACTOR_RESTARTS = 2

def decode_batch(batch, *, size, max_pixels):
    """Decodes a batch of rows `{file: bytes, shard: int}` (a Ray task).

    Returns:
        The rows with `image` (uint8, `(n, height, width, 3)`; zeros for an
        image that cannot be read) and `error` (`""`, or why it cannot).
    """
    from PIL import Image

    from keras_xception.errors import ImageError
    from keras_xception.images import decode

    Image.MAX_IMAGE_PIXELS = None  # decode applies max_pixels itself.
    files = batch["file"]
    images = np.zeros((len(files), size[0], size[1], 3), np.uint8)
    errors = np.full(len(files), "", dtype=object)
    for i, file in enumerate(files):
        try:
            images[i] = decode(os.fsdecode(bytes(file)), size, max_pixels=max_pixels)
        except ImageError as err:
            errors[i] = str(err)
    return {"file": files, "shard": batch["shard"], "error": errors, "image": images}


class ModelActor:
    """A Ray actor holding one model; maps decoded batches to result rows.

    Args:
        spec: The `models.ModelSpec`.
    """

    def __init__(self, spec):
        from keras_xception.batch.models import Predictor

        self.spec = spec
        self.predictor = Predictor(spec)

    def __call__(self, batch):
        import pyarrow as pa

        from keras_xception.batch.models import empty_columns, result_table

        errors = [str(e) for e in batch["error"]]
        ok = np.array([not e for e in errors], dtype=bool)
        n = len(errors)
        if ok.any():
            found = self.predictor(batch["image"][ok].astype(np.float32))
        else:
            found = empty_columns(self.spec.kind, self.spec.top)
        columns = {}
        for key, values in found.items():
            if isinstance(values, np.ndarray):
                full = np.zeros((n,) + values.shape[1:], values.dtype)
                full[ok] = values
            else:
                rows = iter(values)
                full = [next(rows) if good else [] for good in ok]
            columns[key] = full
        paths = [os.fsdecode(bytes(f)) for f in batch["file"]]
        table = result_table(self.spec.kind, paths, columns)
        table = table.append_column("shard", pa.array(batch["shard"], pa.int64()))
        return table.append_column("error", pa.array(errors, pa.string()))


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


def run(shards, spec, *, batch_size, max_pixels, write, progress, address=None,
        ray_options=None):
    """Processes `shards` on Ray Data; see `local_engine.run` for the arguments.

    Args:
        address: The Ray cluster, or `None` to start Ray on this machine.
        ray_options: More keyword arguments for `ray.init`.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    from keras_xception.batch.models import image_size

    size = image_size(spec)
    with connected(address, ray_options) as ray:
        context = ray.data.DataContext.get_current()
        # Progress is this package's own line on stderr.
        logging.getLogger("ray.data").setLevel(logging.ERROR)
        context.execution_options.preserve_order = True
        context.enable_progress_bars = False
        context.print_on_execution_start = False
        plan = actor_plan(ray.cluster_resources())
        rows = [{"file": os.fsencode(p), "shard": s.index}
                for s in shards for p in s.paths]
        dataset = ray.data.from_items(rows)
        del rows
        dataset = dataset.map_batches(
            decode_batch, batch_size=batch_size, batch_format="numpy",
            fn_kwargs={"size": size, "max_pixels": max_pixels},
            # Not the actors' resources, so Ray Data keeps decoding in tasks
            # instead of fusing it into the model actors.
            num_cpus=DECODE_CPUS,
        )
        with warnings.catch_warnings():
            # Ray 2.60 deprecates passing remote options as keywords, but
            # has no named parameter for these two yet.
            warnings.filterwarnings("ignore", message=".*ray_remote_args.*deprecated")
            dataset = dataset.map_batches(
                ModelActor, fn_constructor_kwargs={"spec": spec}, batch_size=batch_size,
                batch_format="numpy",
                compute=ray.data.ActorPoolStrategy(size=plan["size"]),
                num_cpus=plan["num_cpus"], num_gpus=plan["num_gpus"] or None,
                # Ray Data restarts a dead actor, and retries its batches,
                # without limit unless told otherwise: an actor killed on every
                # start (out of memory, say) would then hang the job. Bounded,
                # the job fails with Ray's error instead; the shards written so
                # far are kept.
                max_restarts=ACTOR_RESTARTS, max_task_retries=ACTOR_RESTARTS,
            )
        by_index = {s.index: s for s in shards}
        pending = {}
        for table in dataset.iter_batches(batch_format="pyarrow", batch_size=None):
            for index in pc.unique(table["shard"]).to_pylist():
                part = table.filter(pc.equal(table["shard"], index))
                bucket = pending.setdefault(index, {"tables": [], "errors": [], "count": 0})
                failed = pc.not_equal(part["error"], "")
                bad = part.filter(failed)
                bucket["errors"].extend(zip(bad["path"].to_pylist(), bad["error"].to_pylist()))
                bucket["tables"].append(part.filter(pc.invert(failed)).drop_columns(
                    ["shard", "error"]))
                bucket["count"] += part.num_rows
                progress.update(part.num_rows)
                shard = by_index[index]
                if bucket["count"] == len(shard.paths):
                    del pending[index]
                    write(shard, pa.concat_tables(bucket["tables"]), bucket["errors"])
