"""Distribution strategies for training.

Three strategies, by name (`--strategy`):

- `default`: one device, no `tf.distribute` (works on every Keras backend);
- `mirrored`: `tf.distribute.MirroredStrategy` over the GPUs of this host
  (synchronous data parallelism; the batch size is the global batch);
- `multiworker`: `tf.distribute.MultiWorkerMirroredStrategy` across
  processes, usually one per host, configured by the `TF_CONFIG`
  environment variable of each process (`keras_xception.training.launcher`
  starts local ones).

Under `multiworker` each worker reads only its own shard of the images
(`keras_xception.training.data.shard`, through
`distribute_datasets_from_function`), so nothing is decoded twice; the
metrics are Keras's own on-read-synchronized variables, summed over every
worker, so the logged accuracy is that of all the images.

Keras 3's `fit` does not run under `MultiWorkerMirroredStrategy` as it is
(keras-team/keras#20585, tensorflow/tensorflow#72388): it averages each
step's scalar logs across workers along an axis a scalar does not have,
and a model created inside the strategy's scope makes `fit` reduce a whole
input batch across workers before the first step, which fails.
`MultiWorkerTrainer` avoids both through public API only: it is created
outside the scope (its variables, those of the wrapped classifier and the
optimizer are created inside it), so Keras builds it at the first step, and
its `compute_metrics` returns each log as a 1-element vector, which the
averaging accepts. This is tested on the versions in `TESTED_KERAS`;
`check_keras_version` warns on others.

Workers save as the TensorFlow multi-worker guide describes: every worker
calls `save`, the chief (task `chief`, or worker 0 when the cluster has no
chief) to the real path and the others to temporary folders that are then
deleted.

This module imports TensorFlow only inside the functions that need it.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile

from keras_xception.errors import ConfigError

STRATEGIES = ("default", "mirrored", "multiworker")

# Keras releases (major.minor) on which `MultiWorkerTrainer` is tested.
TESTED_KERAS = ("3.15",)


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
    return tf.distribute.MultiWorkerMirroredStrategy()


def strategy_scope(strategy):
    """`strategy.scope()`, or a no-op for the default strategy (`None`)."""
    return strategy.scope() if strategy is not None else contextlib.nullcontext()


def replicas(strategy) -> int:
    """The number of replicas `strategy` trains on (1 for the default)."""
    return 1 if strategy is None else int(strategy.num_replicas_in_sync)


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


def barrier(strategy):
    """Waits until every worker of a multi-worker `strategy` gets here.

    Used before a worker exits, so that no worker ends while another still
    writes its output (TensorFlow reports a worker that stops early as
    crashed).
    """
    if not multi_worker(strategy):
        return
    import tensorflow as tf

    strategy.reduce(
        tf.distribute.ReduceOp.SUM, strategy.run(lambda: tf.constant(1.0)), axis=None
    )


def check_keras_version(version=None) -> bool:
    """Whether Keras `version` (default: the installed one) is in `TESTED_KERAS`.

    Warns once (`UserWarning`) when it is not: multi-worker training relies
    on how Keras's `fit` reduces logs (see the module docstring).
    """
    import warnings

    if version is None:
        import keras

        version = keras.__version__
    tested = ".".join(version.split(".")[:2]) in TESTED_KERAS
    if not tested:
        warnings.warn(
            f"Multi-worker training is tested with Keras {', '.join(TESTED_KERAS)}; "
            f"this is Keras {version}. See keras-team/keras#20585 if it fails.",
            stacklevel=2,
        )
    return tested


def multi_worker(strategy) -> bool:
    """Whether `strategy` spans several processes."""
    if strategy is None:
        return False
    import tensorflow as tf

    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)


def multi_worker_trainer(model):
    """`model` wrapped for `fit` under `MultiWorkerMirroredStrategy`.

    Call this outside the strategy's scope, then compile and fit the result
    inside it (see the module docstring). The wrapper has no weights of its
    own: it trains `model`'s, and `model` is what to save.
    """
    import keras

    check_keras_version()

    class MultiWorkerTrainer(keras.Model):
        def __init__(self, net):
            super().__init__(name=f"{net.name}_trainer")
            self.net = net

        def call(self, inputs, training=False):
            return self.net(inputs, training=training)

        def compute_metrics(self, x, y, y_pred, sample_weight=None):
            logs = super().compute_metrics(x, y, y_pred, sample_weight)
            # A 1-element vector, which the cross-worker mean of each step's
            # logs (over axis 0) accepts; the epoch's logs come from the
            # synchronized metric variables and are scalars again.
            return {k: keras.ops.reshape(v, (1,)) for k, v in logs.items()}

    return MultiWorkerTrainer(model)
