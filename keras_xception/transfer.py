"""Transfer learning: a new classifier on the Xception base, trained in two phases.

    from keras_xception import build_classifier, unfreeze
    from keras_xception.transfer import fit_classifier, save_classifier

    model = build_classifier(5, image_size=224, class_names=names)  # base frozen
    fit_classifier(model, train_ds, val_ds, epochs=5, fine_tune_epochs=5,
                   work_dir="run1")      # head, then block13-14 at a low rate
    save_classifier(model, "kitchen.keras")

What the classifier gets right by default:

- It takes raw RGB images with values in [0, 255], shape
  `(batch, image_size, image_size, 3)`: a `Rescaling(1/127.5, offset=-1)`
  layer named `preprocess` does `preprocess_input`'s work inside the model,
  so the saved model needs no preprocessing code.
- Augmentation (horizontal flip, small rotation and zoom) is a Keras
  preprocessing sub-model named `augmentation`; those layers are only active
  in training, so `predict` and `evaluate` see the image unchanged.
- The Xception base (a sub-model named `xception`) is called with
  `training=False`, so its BatchNormalization layers keep using their
  ImageNet moving statistics in every phase, and `unfreeze` keeps them
  frozen too. Letting them update on a small new dataset is the pitfall
  behind keras-team/keras#9214.
- The class names travel with the saved file: `save_classifier` writes them
  into the `.keras` archive's `metadata.json` as a `"class_names"` list,
  next to Keras's own `keras_version`. Keras never reads that file back, so
  `keras.saving.load_model(path)` works unchanged with no `custom_objects`;
  `read_class_names(path)` returns the names, and `load_classifier(path)`
  does both and sets `model.class_names`.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
import tempfile
import time
import zipfile

from keras_xception import architecture
from keras_xception.errors import ConfigError

DEFAULT_DROPOUT = 0.2
DEFAULT_UNFREEZE_FROM = "block13"
HEAD_LEARNING_RATE = 1e-3
FINE_TUNE_LEARNING_RATE = 1e-5

BASE_NAME = "xception"
METADATA_FILE = "metadata.json"

# Block names in network order, and each layer's block.
BLOCK_NAMES = tuple(f"block{i}" for i in range(1, len(architecture.BLOCKS) + 3))
_BLOCK_OF_LAYER = re.compile(r"^(block\d+)_")


def _check_image_size(image_size):
    if isinstance(image_size, bool):
        image_size = None
    if isinstance(image_size, int):
        size = (image_size, image_size)
    else:
        try:
            size = tuple(int(v) for v in image_size)
        except (TypeError, ValueError):
            size = ()
    if len(size) != 2 or min(size) < architecture.MIN_SIZE:
        raise ConfigError(
            "`image_size` must be an integer (or a (height, width) pair) of "
            f"at least {architecture.MIN_SIZE}. Received: image_size={image_size!r}"
        )
    return size


def build_classifier(
    num_classes,
    *,
    image_size=architecture.DEFAULT_SIZE,
    weights="imagenet",
    dropout=DEFAULT_DROPOUT,
    augment=True,
    class_names=None,
    name="xception_classifier",
):
    """Builds an image classifier on a frozen Xception base.

    The model: raw RGB input in [0, 255] -> `augmentation` (training only) ->
    `preprocess` (`x / 127.5 - 1`) -> `xception` base (frozen, called with
    `training=False`) -> `avg_pool` -> `dropout` -> `predictions` (softmax,
    computed in float32 under a mixed-precision policy).

    Args:
        num_classes: Number of classes, 2 or more.
        image_size: Input height and width in pixels (an integer or a
            `(height, width)` pair), at least 71. Images fed to the model
            must have this size.
        weights: Weights of the base: `"imagenet"`, a weights file path, an
            http(s) URL, or `None` for random initialization. A random base
            is frozen and kept in inference mode like a pretrained one, so
            `None` only serves to try the pipeline; to train from scratch,
            build `Xception(weights=None, include_top=False)` with your own
            head.
        dropout: Dropout rate before the classifier, in [0, 1); `0` adds no
            dropout layer.
        augment: Whether to add the `augmentation` sub-model.
        class_names: Optional class names, one per class; kept as
            `model.class_names` and written into the file by
            `save_classifier`.
        name: The model's name.

    Returns:
        A `keras.Model` with the base frozen, not compiled.

    Raises:
        keras_xception.errors.ConfigError: For an invalid argument.
        keras_xception.errors.WeightsError: If `weights` cannot be loaded.
    """
    import keras
    from keras import layers

    from keras_xception.model import Xception, classifier_dtype

    if (
        isinstance(num_classes, bool)
        or not isinstance(num_classes, int)
        or num_classes < 2
    ):
        raise ConfigError(
            "`num_classes` must be an integer of at least 2. "
            f"Received: num_classes={num_classes!r}"
        )
    height, width = _check_image_size(image_size)
    if (
        isinstance(dropout, bool)
        or not isinstance(dropout, (int, float))
        or not (0 <= dropout < 1)
    ):
        raise ConfigError(
            f"`dropout` must be a rate in [0, 1). Received: dropout={dropout!r}"
        )
    if class_names is not None:
        class_names = tuple(str(c) for c in class_names)
        if len(class_names) != num_classes:
            raise ConfigError(
                f"`class_names` must name each of the {num_classes} classes. "
                f"Received {len(class_names)}: class_names={list(class_names)!r}"
            )

    inputs = keras.Input((height, width, 3), name="image")
    x = inputs
    if augment:
        x = keras.Sequential(
            [
                layers.RandomFlip("horizontal"),
                layers.RandomRotation(0.05),
                layers.RandomZoom(0.1),
            ],
            name="augmentation",
        )(x)
    x = layers.Rescaling(1.0 / 127.5, offset=-1.0, name="preprocess")(x)
    base = Xception(
        include_top=False,
        weights=weights,
        input_shape=(height, width, 3),
        name=BASE_NAME,
    )
    base.trainable = False
    x = base(x, training=False)
    x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    if dropout > 0:
        x = layers.Dropout(dropout, name="dropout")(x)
    outputs = layers.Dense(
        num_classes, activation="softmax", dtype=classifier_dtype(), name="predictions"
    )(x)
    model = keras.Model(inputs, outputs, name=name)
    if class_names is not None:
        model.class_names = class_names
    return model


def _base_of(model):
    """The Xception base inside `model`, or `model` itself if it is one."""
    try:
        base = model.get_layer(BASE_NAME)
    except ValueError:
        base = None
    if base is not None and hasattr(base, "layers"):
        return base
    names = {layer.name for layer in model.layers}
    if "block1_conv1" in names:
        return model
    raise ConfigError(
        "Expected a model from `build_classifier` (with an 'xception' "
        f"sub-model) or an `Xception` model. Received: model={model.name!r}"
    )


def _block_index(from_block):
    value = from_block
    if isinstance(value, int) and not isinstance(value, bool):
        value = f"block{value}"
    if value not in BLOCK_NAMES:
        raise ConfigError(
            f"Unknown block {from_block!r}. Valid blocks: {', '.join(BLOCK_NAMES)}. "
            f"Received: from_block={from_block!r}"
        )
    return BLOCK_NAMES.index(value)


def unfreeze(model, from_block=DEFAULT_UNFREEZE_FROM):
    """Makes the base trainable from `from_block` on, for fine-tuning.

    Layers of `from_block` and every later block (their separable and
    residual convolutions) become trainable; earlier blocks stay frozen.
    BatchNormalization layers stay frozen everywhere, and since
    `build_classifier` calls the base with `training=False` they also keep
    running in inference mode. The head stays trainable.

    Recompile the model afterwards (with a low learning rate, e.g. 1e-5) for
    the change to take effect.

    Args:
        model: A model from `build_classifier`, or an `Xception` model.
        from_block: The first block to train, `"block1"` to `"block14"` (or
            its number). `"block13"` trains the exit flow; `"block1"`
            everything except BatchNormalization.

    Returns:
        `model`, for chaining.

    Raises:
        keras_xception.errors.ConfigError: If `from_block` is not a block
            name (the message lists the valid ones), or `model` has no
            Xception base.
    """
    from keras import layers

    start = _block_index(from_block)
    base = _base_of(model)
    base.trainable = True
    for layer in base.layers:
        match = _BLOCK_OF_LAYER.match(layer.name)
        trainable = bool(match) and BLOCK_NAMES.index(match.group(1)) >= start
        if isinstance(layer, layers.BatchNormalization):
            trainable = False
        layer.trainable = trainable
    return model


# --- saving -----------------------------------------------------------------


def save_classifier(model, path, *, class_names=None):
    """Saves `model` as a `.keras` file with its class names, atomically.

    The file is written under a temporary name in the same folder and then
    renamed, so `path` is either the complete new model or left untouched.
    The class names go into the archive's `metadata.json` (see the module
    docstring); the model itself loads with plain `keras.saving.load_model`.

    Args:
        model: The model to save.
        path: Destination; must end in `.keras`.
        class_names: Names of the classes in output order; defaults to
            `model.class_names`.

    Raises:
        keras_xception.errors.ConfigError: If `path` does not end in
            `.keras`, or the class names do not match the model's outputs.
    """
    path = os.fspath(path)
    if not path.endswith(".keras"):
        raise ConfigError(
            f"The output file name must end in `.keras`. Received: {path!r}"
        )
    if class_names is None:
        class_names = getattr(model, "class_names", None)
    if class_names is not None:
        class_names = [str(c) for c in class_names]
        units = model.outputs[0].shape[-1]
        if units is not None and len(class_names) != units:
            raise ConfigError(
                f"The model has {units} outputs but {len(class_names)} class "
                f"names were given: {class_names!r}"
            )
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(
        prefix=f".{os.path.basename(path)}.", suffix=".keras", dir=folder
    )
    os.close(fd)
    try:
        model.save(tmp)
        if class_names is not None:
            _add_metadata(tmp, {"class_names": class_names})
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


def _add_metadata(path, entries):
    """Adds `entries` to `metadata.json` inside the `.keras` archive `path`."""
    rewritten = path + ".meta"
    try:
        with zipfile.ZipFile(path) as src, zipfile.ZipFile(rewritten, "w") as dst:
            for info in src.infolist():
                data = src.read(info.filename)
                if info.filename == METADATA_FILE:
                    metadata = json.loads(data)
                    metadata.update(entries)
                    data = json.dumps(metadata).encode()
                dst.writestr(info, data)
        os.replace(rewritten, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(rewritten)
        raise


def read_class_names(path):
    """The class names saved by `save_classifier`, or `None` if there are none."""
    path = os.fspath(path)
    try:
        with zipfile.ZipFile(path) as archive:
            metadata = json.loads(archive.read(METADATA_FILE))
    except (OSError, KeyError, zipfile.BadZipFile, ValueError) as err:
        raise ConfigError(
            f"Cannot read {path!r} as a `.keras` model file: {err}"
        ) from None
    names = metadata.get("class_names")
    return None if names is None else tuple(names)


def load_classifier(path, *, compile=False):
    """Loads a saved classifier and sets `model.class_names` from the file."""
    import keras

    model = keras.saving.load_model(os.fspath(path), compile=compile)
    names = read_class_names(path)
    if names is not None:
        model.class_names = names
    return model


# --- training ---------------------------------------------------------------


def epoch_progress(phase, total_epochs, stream=None):
    """A callback that prints one line per epoch, validation metrics included.

    For example `[head] epoch 2/5: accuracy 0.8750, loss 0.4105,
    val_accuracy 0.8000, val_loss 0.5312 (41s)`.
    """
    import keras

    class EpochProgress(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self._start = time.monotonic()

        def on_epoch_end(self, epoch, logs=None):
            logs = logs or {}
            train = [
                k
                for k in sorted(logs)
                if not k.startswith("val_") and k != "learning_rate"
            ]
            val = [k for k in sorted(logs) if k.startswith("val_")]
            parts = [f"{k} {float(logs[k]):.4f}" for k in train + val]
            seconds = time.monotonic() - self._start
            print(
                f"[{phase}] epoch {epoch + 1}/{total_epochs}: "
                + ", ".join(parts)
                + f" ({seconds:.0f}s)",
                file=stream or sys.stdout,
                flush=True,
            )

    return EpochProgress()


def _scope(model):
    strategy = getattr(model, "distribute_strategy", None)
    return strategy.scope() if strategy is not None else contextlib.nullcontext()


def _compile(model, learning_rate):
    import keras

    with _scope(model):
        model.compile(
            optimizer=keras.optimizers.Adam(learning_rate),
            loss="sparse_categorical_crossentropy",
            metrics=["accuracy"],
        )


class RunState:
    """Files of one training run in `work_dir`, for checkpoints and resuming.

    - `backup-head/`, `backup-fine-tune/`: `keras.callbacks.BackupAndRestore`
      state of each phase (weights, optimizer and epoch), written every
      epoch and deleted when the phase completes;
    - `head.weights.h5`: the weights after the head phase, the mark that
      the first phase is done; deleted when the run completes;
    - `checkpoints/best.weights.h5`: the best weights so far by
      `val_accuracy` (by `accuracy` without validation data); kept.
    """

    def __init__(self, work_dir):
        self.root = os.fspath(work_dir)
        self.backup = {
            "head": os.path.join(self.root, "backup-head"),
            "fine-tune": os.path.join(self.root, "backup-fine-tune"),
        }
        self.head_done = os.path.join(self.root, "head.weights.h5")
        self.best = os.path.join(self.root, "checkpoints", "best.weights.h5")

    def interrupted(self) -> bool:
        return os.path.exists(self.head_done) or any(
            os.path.isdir(p) and os.listdir(p) for p in self.backup.values()
        )

    def finish(self):
        with contextlib.suppress(FileNotFoundError):
            os.remove(self.head_done)


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
    callbacks=(),
    verbose=True,
):
    """Trains a `build_classifier` model in two phases, resumably.

    1. Head: the base frozen, `epochs` epochs at `learning_rate`.
    2. Fine-tune: `unfreeze(model, unfreeze_from)`, then `fine_tune_epochs`
       more epochs at `fine_tune_learning_rate`; epochs are numbered on
       from phase 1.

    Both phases use sparse categorical cross-entropy and report accuracy.
    Each epoch prints one line with the training and validation metrics.
    With a `work_dir`, every epoch is backed up by
    `keras.callbacks.BackupAndRestore` and the best weights are
    checkpointed (see `RunState`); if the process dies, calling again with
    `resume=True` continues from the last completed epoch of the phase that
    was running.

    Call this under the distribution strategy the model was built in (the
    model remembers it on the TensorFlow backend).

    Args:
        model: A model from `build_classifier`.
        train_data: A `tf.data.Dataset` of `(images, labels)` batches.
        val_data: Optional validation dataset of the same kind.
        epochs: Epochs of phase 1 (0 skips it).
        fine_tune_epochs: Epochs of phase 2 (0 skips it).
        unfreeze_from: The first block trained in phase 2.
        learning_rate: Adam learning rate of phase 1.
        fine_tune_learning_rate: Adam learning rate of phase 2.
        work_dir: Folder for backups and checkpoints; `None` for none
            (then nothing can be resumed).
        resume: Continue an interrupted run found in `work_dir`. Without
            it, finding one is an error, so that no run's progress is
            thrown away by accident.
        callbacks: More Keras callbacks for both phases.
        verbose: Whether to print the per-epoch lines.

    Returns:
        A dict of per-epoch metric lists over both phases (as
        `History.history`), plus `"phase"`: `"head"` or `"fine-tune"` for
        each epoch run by this call.

    Raises:
        keras_xception.errors.ConfigError: For a bad argument, or an
            interrupted run in `work_dir` without `resume=True`.
    """
    import keras

    for label, value in (("epochs", epochs), ("fine_tune_epochs", fine_tune_epochs)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ConfigError(
                f"`{label}` must be a non-negative integer. Received: {label}={value!r}"
            )
    if epochs + fine_tune_epochs == 0:
        raise ConfigError(
            "Nothing to train: `epochs` and `fine_tune_epochs` are both 0."
        )
    _block_index(unfreeze_from)
    _base_of(model)

    state = RunState(work_dir) if work_dir is not None else None
    if state is not None and state.interrupted() and not resume:
        raise ConfigError(
            f"{state.root!r} holds an interrupted training run. Pass --resume "
            "(`resume=True`) to continue it, or delete the folder to start over."
        )

    history = {"phase": []}
    monitor = "val_accuracy" if val_data is not None else "accuracy"

    def run_phase(phase, first_epoch, last_epoch, lr):
        _compile(model, lr)
        cbs = list(callbacks)
        if state is not None:
            cbs.append(keras.callbacks.BackupAndRestore(state.backup[phase]))
            os.makedirs(os.path.dirname(state.best), exist_ok=True)
            cbs.append(
                keras.callbacks.ModelCheckpoint(
                    state.best,
                    monitor=monitor,
                    mode="max",
                    save_best_only=True,
                    save_weights_only=True,
                )
            )
        if verbose:
            cbs.append(epoch_progress(phase, last_epoch))
        result = model.fit(
            train_data,
            validation_data=val_data,
            initial_epoch=first_epoch,
            epochs=last_epoch,
            callbacks=cbs,
            shuffle=False,  # the dataset shuffles itself
            verbose=0,
        )
        for key, values in result.history.items():
            history.setdefault(key, []).extend(values)
        history["phase"] += [phase] * len(result.epoch)

    if epochs:
        if state is not None and os.path.exists(state.head_done):
            model.load_weights(state.head_done)
            if verbose:
                print(
                    f"[head] done in an earlier run; resuming after epoch {epochs}",
                    flush=True,
                )
        else:
            _base_of(model).trainable = False
            run_phase("head", 0, epochs, learning_rate)
            if state is not None and fine_tune_epochs:
                tmp = state.head_done + ".tmp.weights.h5"
                model.save_weights(tmp)
                os.replace(tmp, state.head_done)
    if fine_tune_epochs:
        unfreeze(model, unfreeze_from)
        run_phase(
            "fine-tune", epochs, epochs + fine_tune_epochs, fine_tune_learning_rate
        )
    if state is not None:
        state.finish()
    return history
