"""One fine-tuning job from `Settings`: check, scan, train, save.

The order is what makes a job safe to leave running:

1. `Settings.check_paths`: the output's folder is writable, the output is
   not there (or `overwrite`), and `resume` has something to resume; all
   before any image is decoded.
2. `data.scan`: the dataset folder is listed and every file checked
   cheaply, and split into training and validation images.
3. With `--strategy multiworker --workers N` and no `TF_CONFIG`, this
   process becomes the launcher: it starts N workers with the same
   arguments and waits for them. Otherwise it trains (`fit_classifier`),
   saves the model atomically, and only then removes its checkpoints.
"""

from __future__ import annotations

import dataclasses
import os
import sys

from keras_xception.errors import ConfigError, counted
from keras_xception.training import checkpoints, data, distributed, launcher
from keras_xception.training.settings import Settings

# Set by the local launcher, which has checked every image already, so that
# its workers do not read every file again.
CHECKED_ENV = "KERAS_XCEPTION_DATA_CHECKED"


def _describe(folder, train, val) -> str:
    counts = ", ".join(f"{name} {n}" for name, n in folder.counts().items())
    return (
        f"{len(folder.paths)} images in {folder.num_classes} classes ({counts}); "
        f"training on {len(train[0])}, validating on {len(val[0])}"
    )


def run(settings: Settings, *, argv=None, stdout=None, stderr=None) -> int:
    """Runs the job `settings` describes.

    Args:
        settings: The validated settings.
        argv: The command line's arguments (after the program name), passed
            unchanged to local workers; `None` for `sys.argv[1:]`.
        stdout: Where the result line goes; `None` for `sys.stdout`.
        stderr: Where progress and warnings go; `None` for `sys.stderr`.

    Returns:
        The exit status: 0.

    Raises:
        keras_xception.errors.XceptionError: For any expected failure (one
            line); `launcher.WorkerFailed` when a local worker failed.
    """
    stdout = stdout or sys.stdout
    stderr = stderr or sys.stderr
    config = distributed.tf_config()
    multi = settings.strategy == "multiworker"
    if multi and config is not None and settings.workers is not None:
        size = distributed.cluster_size(config)
        if size != settings.workers:
            raise ConfigError(
                f"--workers {settings.workers} does not match the {size} tasks in TF_CONFIG."
            )
    is_launcher = multi and config is None
    if is_launcher and settings.workers is None:
        raise ConfigError(
            "--strategy multiworker needs TF_CONFIG describing the cluster "
            "(one process per host), or --workers N to start N local workers."
        )
    chief = distributed.is_chief(config)
    if config is not None:
        launcher.watch_launcher()
    if chief:
        settings.check_paths()

    checked = os.environ.get(CHECKED_ENV) == "1"
    folder = data.scan(settings.data_dir, check_images=not checked)
    if settings.weights is not None:
        # Find or download and check the base's weights now, with progress
        # on stderr (stdout carries only the result), once for all local
        # workers: the one model source every command reads.
        from keras_xception.source import open_source

        weights = open_source(settings.weights, progress=stderr).path
        settings = dataclasses.replace(settings, weights=str(weights))
    train, val = data.split(folder, settings.val_split, seed=settings.seed)

    if is_launcher:
        print(
            f"{_describe(folder, train, val)}; starting {settings.workers} local workers",
            file=stderr,
            flush=True,
        )
        args = list(sys.argv[1:] if argv is None else argv)
        command = [sys.executable, "-m", "keras_xception.cli", *args]
        env = dict(os.environ, **{CHECKED_ENV: "1"})
        launcher.launch_local_workers(command, settings.workers, env=env)
        return 0
    return _train(settings, folder, train, val, config, chief, stdout, stderr)


def _train(settings, folder, train, val, config, chief, stdout, stderr) -> int:
    import keras

    from keras_xception.training.classifier import build_classifier
    from keras_xception.training.loop import fit_classifier
    from keras_xception.training.saving import save_classifier

    say = (lambda text: print(text, file=stderr, flush=True)) if chief else (lambda text: None)
    policy = keras.config.dtype_policy()
    if settings.mixed_precision:
        import tensorflow as tf

        gpu = bool(tf.config.list_physical_devices("GPU"))
        keras.config.set_dtype_policy("mixed_float16" if gpu else "mixed_bfloat16")
    # The same command repeats its run: every random draw (the new layers'
    # initial weights, dropout, augmentation, the shuffling) comes from
    # `--seed`. The caller's generators are put back afterwards.
    restore_generators = _seed_generators(settings.seed)
    try:
        strategy = distributed.get_strategy(settings.strategy)
        replicas = distributed.replicas(strategy)
        if settings.batch_size < replicas or settings.batch_size % replicas:
            raise ConfigError(
                f"--batch-size must be a multiple of the {replicas} replicas it is "
                f"split across. Received: --batch-size {settings.batch_size}"
            )
        multi = distributed.multi_worker(strategy)
        workers = distributed.cluster_size(config) if multi else 1
        shard_note = ""
        if multi:
            per_train = -(-len(train[0]) // workers)
            per_val = -(-len(val[0]) // workers)
            shard_note = (
                f"; each worker decodes its own {per_train} training and {per_val} "
                "validation images (shards padded to equal size with images of weight 0)"
            )
        say(
            f"{_describe(folder, train, val)}; strategy {settings.strategy} with "
            f"{replicas} replica(s){shard_note}"
        )
        train_ds = _dataset(settings, *train, strategy if multi else None, shuffle=True)
        val_ds = None
        if val[0]:
            val_ds = _dataset(settings, *val, strategy if multi else None, shuffle=False)
        with distributed.strategy_scope(strategy):
            model = build_classifier(
                folder.num_classes,
                image_size=settings.image_size,
                weights=settings.weights,
                dropout=settings.dropout,
                class_names=folder.class_names,
            )
        history = fit_classifier(
            model,
            train_ds,
            val_ds,
            epochs=settings.epochs,
            fine_tune_epochs=settings.fine_tune_epochs,
            unfreeze_from=settings.unfreeze_from,
            learning_rate=settings.learning_rate,
            fine_tune_learning_rate=settings.fine_tune_learning_rate,
            work_dir=settings.work_dir,
            resume=settings.resume,
            overwrite=settings.overwrite,
            strategy=strategy,
            chief=chief,
            cleanup=False,
            info={
                "class_names": list(folder.class_names),
                "image_size": settings.image_size,
                "unfreeze_from": settings.unfreeze_from,
            },
            stream=stderr,
        )
        metadata = {
            "training": {
                "epochs": settings.epochs,
                "fine_tune_epochs": settings.fine_tune_epochs,
                "history": history,
            }
        }
        distributed.save_model(
            lambda path: save_classifier(
                model, path, metadata=metadata, overwrite=settings.overwrite
            ),
            settings.output,
            config,
        )
        distributed.barrier(strategy)
    finally:
        keras.config.set_dtype_policy(policy)
        restore_generators()
    if chief:
        checkpoints.Checkpoints(settings.work_dir).clear()
        try:
            os.rmdir(settings.work_dir)  # only if nothing was kept in it
        except OSError:
            pass
        final = ", ".join(
            f"{key} {values[-1]:.4f}"
            for key, values in history.items()
            if key in ("accuracy", "val_accuracy") and values
        )
        names = ", ".join(folder.class_names)
        print(
            f"saved {settings.output} ({folder.num_classes} classes: {names}; "
            f"{counted(len(history['phase']), 'epoch')}; {final})",
            file=stdout,
            flush=True,
        )
    return 0


def _seed_generators(seed):
    """Seeds every generator as `keras.utils.set_random_seed(seed)` does;
    returns a function that puts back the ones this process had: Python's
    and NumPy's states, TensorFlow's and Keras's global seeds. A caller in
    the same process (a notebook, the tests) then draws as if the command
    had not run."""
    import random

    import keras
    import numpy as np
    from keras.src.backend.common import global_state  # Keras is pinned (setup.cfg).
    from keras.src.random import seed_generator
    from keras.src.utils import rng_utils
    from tensorflow.python.eager import context

    keras_names = (rng_utils.GLOBAL_RANDOM_SEED, seed_generator.GLOBAL_SEED_GENERATOR)
    python, numpy, tensorflow = random.getstate(), np.random.get_state(), context.global_seed()
    saved = {name: global_state.get_global_attribute(name) for name in keras_names}
    keras.utils.set_random_seed(seed)

    def restore():
        random.setstate(python)
        np.random.set_state(numpy)
        context.set_global_seed(tensorflow)
        for name, value in saved.items():
            global_state.set_global_attribute(name, value)

    return restore


def _dataset(settings, paths, labels, strategy, *, shuffle):
    """The dataset of `paths`; under a multi-worker `strategy`, one shard per worker."""
    if strategy is None:
        return data.make_dataset(
            paths,
            labels,
            image_size=settings.image_size,
            batch_size=settings.batch_size,
            shuffle=shuffle,
            seed=settings.seed,
        )

    def per_worker(context):
        mine = data.shard(
            paths, labels, context.input_pipeline_id, context.num_input_pipelines
        )
        return data.make_dataset(
            mine[0],
            mine[1],
            weights=mine[2],
            image_size=settings.image_size,
            batch_size=context.get_per_replica_batch_size(settings.batch_size),
            shuffle=shuffle,
            seed=settings.seed + context.input_pipeline_id,
        )

    return strategy.distribute_datasets_from_function(per_worker)
