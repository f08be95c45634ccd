"""The two-phase training loop, resumable from crash-safe checkpoints.

1. Head: the base frozen, `epochs` epochs at `learning_rate`.
2. Fine-tune: `unfreeze(model, unfreeze_from)`, then `fine_tune_epochs`
   epochs at `fine_tune_learning_rate`.

Epochs are counted per phase: the progress says `phase 2/2 (fine-tune),
epoch 3/5`, and resuming in phase 2 does not run phase 1 again. Each phase
is one `model.fit` with `initial_epoch` set to the epochs that phase has
done. The progress lines come from `EpochProgress` rather than
`fit(verbose=2)`, whose "Epoch 3/5" knows nothing of the phases and goes to
stdout, which the command line keeps for results.
"""

from __future__ import annotations

import contextlib
import sys
import time

from keras_xception.errors import ConfigError
from keras_xception.training import checkpoints as checkpoints_lib
from keras_xception.training import distributed
from keras_xception.training.classifier import (
    DEFAULT_UNFREEZE_FROM,
    FINE_TUNE_LEARNING_RATE,
    HEAD_LEARNING_RATE,
    base_of,
    block_index,
    unfreeze,
)


def _number(value) -> float:
    import numpy as np

    return float(np.mean(value))


def _format_logs(logs) -> str:
    keys = [k for k in sorted(logs) if not k.startswith("val_") and k != "learning_rate"]
    keys += [k for k in sorted(logs) if k.startswith("val_")]
    return ", ".join(f"{k} {_number(logs[k]):.4f}" for k in keys)


def epoch_progress(phase, total_epochs, stream=None, *, phase_number=1, phases=1):
    """A callback that prints one line per epoch, validation metrics included.

    For example `phase 2/2 (fine-tune), epoch 3/5: accuracy 0.8750, loss
    0.4105, val_accuracy 0.8000, val_loss 0.5312 (41s)`.

    Args:
        phase: The phase's name.
        total_epochs: Epochs of the phase.
        stream: Where the lines go; `None` for stderr.
        phase_number: The phase's number, from 1.
        phases: How many phases the run has.
    """
    import keras

    class EpochProgress(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self._start = time.monotonic()

        def on_epoch_end(self, epoch, logs=None):
            seconds = time.monotonic() - self._start
            print(
                f"phase {phase_number}/{phases} ({phase}), epoch {epoch + 1}/{total_epochs}: "
                f"{_format_logs(logs or {})} ({seconds:.0f}s)",
                file=stream or sys.stderr,
                flush=True,
            )

    return EpochProgress()


def _recorder(phase, history, store, info, monitor, best, model, optimizer):
    """A callback that records each epoch and checkpoints it (see `checkpoints`)."""
    import keras

    class Recorder(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            logs = {k: _number(v) for k, v in (logs or {}).items()}
            history["phase"].append(phase)
            for key, value in logs.items():
                history.setdefault(key, []).append(value)
            if store is None:
                return
            score = logs.get(monitor)
            if score is not None and (best["value"] is None or score > best["value"]):
                best["value"] = score
                checkpoints_lib.save_best_weights(model, store.best)
            store.save(
                phase,
                epoch + 1,
                dict(info, history=history, best=best["value"]),
                [v.numpy() for v in model.weights],
                [v.numpy() for v in optimizer().variables],
            )

    return Recorder()


def _compile(trainer, learning_rate):
    import keras

    trainer.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        # Averaged over the weights, so padding does not dilute the loss.
        loss=keras.losses.SparseCategoricalCrossentropy(
            reduction="mean_with_sample_weight"
        ),
        # Weighted, so that images given weight 0 (padding of a worker's
        # shard, images that failed to decode) count for nothing.
        weighted_metrics=["accuracy"],
    )


def _build_state(trainer, train_data):
    """Creates the optimizer's, the metrics' and the loss's variables before `fit`.

    Without a `tf.distribute` strategy, Keras's TensorFlow trainer creates
    them inside the first trace of its train step, and a `tf.function` that
    created variables is traced a second time, without them, for its calls:
    every phase traced the whole step twice. Keras builds them beforehand
    itself under a strategy, and always under JAX, with this method, from
    symbolic tensors shaped like a batch; the dataset's `element_spec` gives
    those, so no batch is read and nothing is computed. Only for a plain
    `tf.data.Dataset`: a distributed one's spec is per replica, and Keras
    builds first itself for the strategy it belongs to. (Keras is pinned
    to 3.15, where the method is `Trainer._symbolic_build`.)
    """
    import keras

    if keras.backend.backend() != "tensorflow":
        return
    import tensorflow as tf

    build = getattr(trainer, "_symbolic_build", None)
    if build is not None and isinstance(train_data, tf.data.Dataset):
        build(data_batch=train_data.element_spec)


def _assign(variables, arrays, what, path):
    if len(variables) != len(arrays) or any(
        tuple(v.shape) != tuple(a.shape) for v, a in zip(variables, arrays)
    ):
        raise ConfigError(
            f"The checkpoint {path!r} does not fit this model ({what} differ); "
            "it was written with other settings. Resume with the settings of "
            "that run, or pass --overwrite instead of --resume to start over."
        )
    for variable, value in zip(variables, arrays):
        variable.assign(value)


def _scope(model, strategy):
    if strategy is not None:
        return strategy.scope()
    strategy = getattr(model, "distribute_strategy", None)
    return strategy.scope() if strategy is not None else contextlib.nullcontext()


def fit_classifier(
    model,
    train_data,
    val_data=None,
    *,
    epochs=5,
    fine_tune_epochs=5,
    unfreeze_from=DEFAULT_UNFREEZE_FROM,
    learning_rate=HEAD_LEARNING_RATE,
    fine_tune_learning_rate=FINE_TUNE_LEARNING_RATE,
    work_dir=None,
    resume=False,
    overwrite=False,
    callbacks=(),
    verbose=True,
    strategy=None,
    chief=True,
    cleanup=True,
    info=None,
    stream=None,
):
    """Trains a `build_classifier` model in two phases, resumably.

    See the module docstring for the phases. Both use sparse categorical
    cross-entropy and report accuracy, weighted by the data's sample
    weights when it has them. With a `work_dir`, every epoch is
    checkpointed (see `keras_xception.training.checkpoints`); if the
    process dies, calling again with `resume=True` continues after the last
    completed epoch, in its phase.

    Args:
        model: A model from `build_classifier`, built under `strategy`.
        train_data: A `tf.data.Dataset` of `(images, labels)` or
            `(images, labels, weights)` batches (or a distributed dataset).
        val_data: Optional validation dataset of the same kind.
        epochs: Epochs of phase 1 (0 skips it).
        fine_tune_epochs: Epochs of phase 2 (0 skips it).
        unfreeze_from: The first block trained in phase 2.
        learning_rate: Adam learning rate of phase 1.
        fine_tune_learning_rate: Adam learning rate of phase 2.
        work_dir: Folder for checkpoints; `None` for none (then nothing can
            be resumed).
        resume: Continue the interrupted run found in `work_dir`.
        overwrite: Without `resume`, discard an interrupted run found in
            `work_dir` and start over. Without either, finding one is an
            error, so that no run's progress is thrown away by accident.
        callbacks: More Keras callbacks for both phases.
        verbose: Whether to print the per-epoch lines.
        strategy: The `tf.distribute` strategy the model was built under;
            `None` for the model's own. Under `MultiWorkerMirroredStrategy`
            the model is trained through
            `distributed.multi_worker_trainer`.
        chief: Whether this process writes checkpoints and prints progress
            (in a multi-worker run, only the chief does).
        cleanup: Whether to remove the checkpoints once the last epoch is
            done; a caller that saves the model afterwards passes `False`
            and calls `Checkpoints(work_dir).clear()` once it is saved.
        info: JSON-serializable facts about the run (class names, image
            size) stored in each checkpoint; resuming checks they match.
        stream: Where the progress lines go; `None` for stderr.

    Returns:
        A dict of per-epoch metric lists over both phases (as
        `History.history`), plus `"phase"`: `"head"` or `"fine-tune"` for
        each epoch. After a resume, it covers the epochs of the earlier
        runs too.

    Raises:
        keras_xception.errors.ConfigError: For a bad argument; an
            interrupted run in `work_dir` without `resume` or `overwrite`;
            `resume` with nothing to resume; or a checkpoint that is
            damaged (with no readable one before it) or does not match.
    """
    for label, value in (("epochs", epochs), ("fine_tune_epochs", fine_tune_epochs)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ConfigError(
                f"`{label}` must be a non-negative integer. Received: {label}={value!r}"
            )
    if epochs + fine_tune_epochs == 0:
        raise ConfigError("Nothing to train: `epochs` and `fine_tune_epochs` are both 0.")
    block_index(unfreeze_from)
    base_of(model)
    info = dict(info or {})
    say = stream or sys.stderr

    store = checkpoints_lib.Checkpoints(work_dir) if work_dir is not None else None
    start = None
    if store is not None:
        if resume:
            start = store.latest(
                warn=lambda message: print(f"warning: {message}", file=say, flush=True)
            )
            if start is None:
                raise ConfigError(
                    f"Nothing to resume: {store.root!r} holds no checkpoint. "
                    "Run without --resume (`resume=False`) to start training."
                )
            for key, value in info.items():
                if start.info.get(key) != value:
                    raise ConfigError(
                        f"The checkpoint {start.path!r} was written for "
                        f"{key}={start.info.get(key)!r}, but this run has "
                        f"{key}={value!r}. Resume with the settings of that run, "
                        "or pass --overwrite instead of --resume to start over."
                    )
            start.check_epochs(epochs, fine_tune_epochs)
        elif store.paths():
            if not overwrite:
                raise ConfigError(
                    f"{store.root!r} holds an interrupted training run. Pass "
                    "--resume (`resume=True`) to continue it, or --overwrite "
                    "(`overwrite=True`) to start over."
                )
            if chief:
                store.remove_all()
    if not chief:
        store = None

    history = {"phase": []}
    best = {"value": None}
    if start is not None:
        history = {k: list(v) for k, v in start.info["history"].items()}
        best["value"] = start.info.get("best")
    monitor = "val_accuracy" if val_data is not None else "accuracy"

    phases = [
        (name, n, lr)
        for name, n, lr in (
            ("head", epochs, learning_rate),
            ("fine-tune", fine_tune_epochs, fine_tune_learning_rate),
        )
        if n
    ]
    multi = distributed.multi_worker(strategy)
    # Created outside the strategy's scope, see `distributed`.
    trainer = distributed.multi_worker_trainer(model) if multi else model
    pending = start
    for number, (phase, total, lr) in enumerate(phases, start=1):
        first = 0
        if start is not None:
            done_phase = checkpoints_lib.PHASES.index(start.phase)
            if done_phase > checkpoints_lib.PHASES.index(phase):
                continue  # finished before the interruption
            if start.phase == phase:
                first = min(start.epoch, total)
        if phase == "fine-tune":
            unfreeze(model, unfreeze_from)
        else:
            base_of(model).trainable = False
        with _scope(model, strategy):
            _compile(trainer, lr)
            if strategy is None:
                _build_state(trainer, train_data)
            if pending is not None:
                _assign(model.weights, pending.model_arrays, "weights", pending.path)
                if pending.phase == phase and first < total:
                    # Once: a LossScaleOptimizer (mixed_float16) built twice
                    # would hold its loss scale's variables twice.
                    if not trainer.optimizer.built:
                        trainer.optimizer.build(trainer.trainable_variables)
                    _assign(
                        trainer.optimizer.variables,
                        pending.optimizer_arrays,
                        "optimizer variables",
                        pending.path,
                    )
                if verbose and chief:
                    position = (
                        f"epoch {first + 1}/{total}" if first < total
                        else f"all {total} epochs done"
                    )
                    print(
                        f"resuming from {pending.path}: phase {number}/{len(phases)} "
                        f"({phase}), {position}",
                        file=say,
                        flush=True,
                    )
                pending = None
            if first >= total:
                continue
            cbs = [
                _recorder(
                    phase,
                    history,
                    store,
                    info,
                    monitor,
                    best,
                    model,
                    lambda: trainer.optimizer,
                )
            ]
            if verbose and chief:
                cbs.append(
                    epoch_progress(
                        phase, total, say, phase_number=number, phases=len(phases)
                    )
                )
            cbs += list(callbacks)
            trainer.fit(
                train_data,
                validation_data=val_data,
                initial_epoch=first,
                epochs=total,
                callbacks=cbs,
                shuffle=False,  # the datasets shuffle themselves
                verbose=0,
            )
    if store is not None and cleanup:
        store.clear()
    return history
