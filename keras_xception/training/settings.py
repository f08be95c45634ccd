"""The settings of one fine-tuning job, validated once.

`Settings` is what `keras-xception fine-tune` builds from its command line
and what `keras_xception.training.job.run` takes. Creating one checks every
value (`ConfigError` naming the option and the value received);
`check_paths` then checks the file system (the output's folder, an existing
output, something to resume) before any image is decoded.
"""

from __future__ import annotations

import dataclasses
import math
import os

from keras_xception import architecture, fileio
from keras_xception.errors import ConfigError
from keras_xception.training import checkpoints, classifier

STRATEGIES = ("default", "mirrored", "multiworker")

# The largest --image-size. At 2048 x 2048 one image's activations in the
# entry flow already take gigabytes in training; larger sizes cannot train a
# batch on any one accelerator, and the ImageNet features gain nothing from
# them.
MAX_IMAGE_SIZE = 2048
# NumPy's generator, which `keras.utils.set_random_seed` seeds, takes no more.
MAX_SEED = 2**32 - 1


@dataclasses.dataclass(frozen=True)
class Settings:
    """Everything a fine-tuning job needs; see `keras-xception fine-tune --help`.

    Attributes:
        data_dir: Folder with one subfolder of images per class.
        output: The `.keras` file to write.
        weights: Starting weights of the base: `"imagenet"`, a weights
            file, an http(s) URL, or `None` for a random base.
        image_size: Training images are `image_size` x `image_size`, from
            71 to `MAX_IMAGE_SIZE` (2048).
        batch_size: Global batch size, split evenly across workers.
        epochs: Epochs of phase 1 (the head, base frozen).
        fine_tune_epochs: Epochs of phase 2 (top blocks unfrozen).
        unfreeze_from: First block trained in phase 2.
        val_split: Fraction of each class held out for validation.
        learning_rate: Adam learning rate of phase 1: finite, above 0.
        fine_tune_learning_rate: Adam learning rate of phase 2: finite,
            above 0.
        dropout: Dropout before the classifier, in [0, 1).
        mixed_precision: Compute in float16 (GPU) or bfloat16 (CPU).
        strategy: `"default"`, `"mirrored"` or `"multiworker"`.
        workers: Local workers to start (multiworker without TF_CONFIG).
        work_dir: Folder for checkpoints; `None` for `OUT.training`.
        resume: Continue the interrupted run in `work_dir`.
        overwrite: Replace an existing output, and start over when
            `work_dir` holds an interrupted run.
        seed: Seed of the validation split, the shuffling, the new layers'
            initial weights, dropout and augmentation (0 to 2**32 - 1).
    """

    data_dir: str
    output: str
    weights: str | None = "imagenet"
    image_size: int = architecture.DEFAULT_SIZE
    batch_size: int = 32
    epochs: int = 5
    fine_tune_epochs: int = 5
    unfreeze_from: str = classifier.DEFAULT_UNFREEZE_FROM
    val_split: float = 0.2
    learning_rate: float = classifier.HEAD_LEARNING_RATE
    fine_tune_learning_rate: float = classifier.FINE_TUNE_LEARNING_RATE
    dropout: float = classifier.DEFAULT_DROPOUT
    mixed_precision: bool = False
    strategy: str = "default"
    workers: int | None = None
    work_dir: str | None = None
    resume: bool = False
    overwrite: bool = False
    seed: int = 1337

    def __post_init__(self):
        from keras_xception.weights.urls import is_url

        set_ = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731
        set_("data_dir", os.fspath(self.data_dir))
        set_("output", os.fspath(self.output))
        if not self.output.endswith(".keras"):
            raise ConfigError(
                f"--output must name a .keras file. Received: --output {self.output}"
            )
        if self.work_dir is None:
            set_("work_dir", os.path.splitext(self.output)[0] + ".training")
        set_("work_dir", os.fspath(self.work_dir))
        _integer("--image-size", self.image_size, architecture.MIN_SIZE, MAX_IMAGE_SIZE)
        _integer("--batch-size", self.batch_size, 1)
        _integer("--epochs", self.epochs, 0)
        _integer("--fine-tune-epochs", self.fine_tune_epochs, 0)
        _integer("--seed", self.seed, 0, MAX_SEED)
        if self.epochs + self.fine_tune_epochs == 0:
            raise ConfigError(
                "Nothing to train: --epochs and --fine-tune-epochs are both 0."
            )
        _fraction("--val-split", self.val_split)
        _fraction("--dropout", self.dropout)
        for flag, value in (
            ("--learning-rate", self.learning_rate),
            ("--fine-tune-learning-rate", self.fine_tune_learning_rate),
        ):
            if not _number(value) or not 0 < value < math.inf:
                raise ConfigError(
                    f"{flag} must be a finite number above 0. Received: {flag} {value}"
                )
        classifier.block_index(self.unfreeze_from)
        if self.strategy not in STRATEGIES:
            raise ConfigError(
                f"--strategy must be one of {', '.join(STRATEGIES)}. "
                f"Received: --strategy {self.strategy}"
            )
        weights = self.weights
        if isinstance(weights, str) and weights.lower() == "none":
            set_("weights", None)
        elif weights is not None and weights != "imagenet" and not is_url(weights):
            if not os.path.isfile(weights):
                raise ConfigError(
                    "--weights must be 'imagenet', 'none', an http(s) URL or an "
                    f"existing weights file. Received: --weights {weights}"
                )
        if self.workers is not None:
            if self.strategy != "multiworker":
                raise ConfigError("--workers only applies with --strategy multiworker.")
            _integer("--workers", self.workers, 1)
            if self.batch_size % self.workers:
                raise ConfigError(
                    f"--batch-size must be a multiple of --workers, so that each "
                    f"worker takes an equal share of every batch. Received: "
                    f"--batch-size {self.batch_size} --workers {self.workers}"
                )

    @property
    def phases(self) -> tuple[tuple[str, int], ...]:
        """The phases that run, as `(name, epochs)`: `head`, then `fine-tune`."""
        return tuple(
            (name, n)
            for name, n in (("head", self.epochs), ("fine-tune", self.fine_tune_epochs))
            if n
        )

    def check_paths(self) -> None:
        """Checks the output and the work folder before any work is done.

        Raises:
            keras_xception.errors.ConfigError: If the output's folder cannot
                be written; the output exists (or is a folder) without
                `overwrite`; `work_dir` holds an interrupted run and neither
                `resume` nor `overwrite` is set; or `resume` is set and
                there is nothing to resume, no checkpoint reads back, or
                the last one has done more epochs of its phase than asked.
        """
        output = fileio.check_parent(self.output, what="--output")
        fileio.check_parent(self.work_dir, what="--work-dir")
        if output.is_dir():
            raise ConfigError(
                f"--output {self.output} is a folder; name a .keras file."
            )
        if (output.exists() or output.is_symlink()) and not self.overwrite:
            raise ConfigError(
                f"--output {self.output} already exists; pass --overwrite to "
                "replace it, or choose another name."
            )
        if os.path.exists(self.work_dir) and not os.path.isdir(self.work_dir):
            raise ConfigError(
                f"--work-dir {self.work_dir} is a file, not a folder."
            )
        store = checkpoints.Checkpoints(self.work_dir)
        found = store.paths()
        if self.resume:
            if not found:
                raise ConfigError(
                    f"Nothing to resume: {self.work_dir!r} holds no checkpoint. "
                    "Run without --resume to start training."
                )
            # A damaged run, or one past the epochs asked for, is reported
            # before any work.
            last = store.latest()
            if last is not None:  # None only if removed since `paths`
                last.check_epochs(self.epochs, self.fine_tune_epochs)
        elif found and not self.overwrite:
            raise ConfigError(
                f"{self.work_dir!r} holds an interrupted training run. Pass "
                "--resume to continue it, or --overwrite to start over."
            )


def _number(value):
    return not isinstance(value, bool) and isinstance(value, (int, float))


def _integer(flag, value, low, high=None):
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (
        high is not None and value > high
    ):
        limits = f"of at least {low}" if high is None else f"from {low} to {high}"
        raise ConfigError(
            f"{flag} must be an integer {limits}. Received: {flag} {value}"
        )


def _fraction(flag, value):
    # NaN fails every comparison, so `not 0 <= value < 1` refuses it too.
    if not _number(value) or not 0 <= value < 1:
        raise ConfigError(f"{flag} must be in [0, 1). Received: {flag} {value}")
