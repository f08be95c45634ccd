"""Crash-safe checkpoints of a training run, and resuming from them.

After every epoch the run's work folder gets one file,
`checkpoint-<phase>-<epoch>.npz` (phase 1 is the head, 2 the fine-tune
phase; the epoch is counted within the phase), holding everything needed
to continue: every weight of the model (BatchNormalization statistics
included), every variable of the optimizer (Adam's moments and step
count), and a JSON record of the phase, the epoch, the class names, the
image size and the history so far. The file is written under a temporary
name and renamed into place (`keras_xception.fileio`), so a kill at any
moment leaves the previous checkpoint or the new one, never half of one.
The two newest checkpoints are kept; if the newest turns out unreadable
(a disk that lost its last write), resuming warns, names it and falls
back to the one before.

`best.weights.h5` holds the weights of the epoch with the best
`val_accuracy` (or `accuracy` without validation data), also written
atomically. The checkpoints are removed when the job ends with the model
saved; `best.weights.h5` is kept on purpose, for a user who prefers the
best epoch to the last (`model.load_weights(path)` on a model built with
the same settings).

Keras's `BackupAndRestore` and `ModelCheckpoint` are not used: both write
their files in place, so a kill mid-write leaves a truncated file where the
last good one was, and `BackupAndRestore` keeps one state per folder with no
notion of the two phases.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import zipfile

from keras_xception import fileio
from keras_xception.errors import ConfigError, counted

PHASES = ("head", "fine-tune")
BEST_WEIGHTS = "best.weights.h5"
KEEP = 2
FORMAT = 1

_NAME = re.compile(r"^checkpoint-([12])-(\d{4,})\.npz$")


class Checkpoint:
    """One checkpoint read back: its `path`, `info` dict and arrays."""

    def __init__(self, path, info, model_arrays, optimizer_arrays):
        self.path = path
        self.info = info
        self.model_arrays = model_arrays
        self.optimizer_arrays = optimizer_arrays

    @property
    def phase(self) -> str:
        return self.info["phase"]

    @property
    def epoch(self) -> int:
        return int(self.info["epoch"])

    def check_epochs(self, epochs: int, fine_tune_epochs: int) -> None:
        """Refuses a resume that asks for fewer epochs of this checkpoint's
        phase than it has already done: they cannot be undone.

        Raises:
            ConfigError: Naming the option, the epochs done and what to pass.
        """
        asked, flag, name = {
            "head": (epochs, "--epochs", "epochs"),
            "fine-tune": (fine_tune_epochs, "--fine-tune-epochs", "fine_tune_epochs"),
        }[self.phase]
        if self.epoch > asked:
            raise ConfigError(
                f"{flag} (`{name}`) {asked} is fewer than the "
                f"{counted(self.epoch, self.phase + ' epoch')} the checkpoint "
                f"{self.path!r} has done. Resume with {self.epoch} or more, or "
                "pass --overwrite (`overwrite=True`) instead of --resume to start over."
            )


class Checkpoints:
    """The checkpoints in one work folder.

    Args:
        root: The work folder (made when the first checkpoint is saved).
        keep: How many of the newest checkpoints to keep.
    """

    def __init__(self, root, keep=KEEP):
        self.root = os.fspath(root)
        self.keep = keep

    @property
    def best(self) -> str:
        return os.path.join(self.root, BEST_WEIGHTS)

    def path(self, phase, epoch) -> str:
        return os.path.join(
            self.root, f"checkpoint-{PHASES.index(phase) + 1}-{epoch:04d}.npz"
        )

    def paths(self) -> list[str]:
        """The checkpoint files, newest first."""
        try:
            names = os.listdir(self.root)
        except (FileNotFoundError, NotADirectoryError):
            return []
        found = []
        for name in names:
            match = _NAME.match(name)
            if match:
                found.append(((int(match.group(1)), int(match.group(2))), name))
        return [os.path.join(self.root, name) for _, name in sorted(found, reverse=True)]

    def save(self, phase, epoch, info, model_values, optimizer_values):
        """Writes a checkpoint atomically and removes all but the newest `keep`.

        Args:
            phase: `"head"` or `"fine-tune"`.
            epoch: Epochs completed in that phase.
            info: JSON-serializable record (the history, class names...).
            model_values: The model's weights, as NumPy arrays in
                `model.weights` order.
            optimizer_values: The optimizer's variables, likewise.
        """
        os.makedirs(self.root, exist_ok=True)
        record = dict(info, phase=phase, epoch=int(epoch), format=FORMAT)
        arrays = {f"model/{i:05d}": v for i, v in enumerate(model_values)}
        arrays.update({f"optimizer/{i:05d}": v for i, v in enumerate(optimizer_values)})
        import numpy as np

        arrays["info"] = np.frombuffer(json.dumps(record).encode(), np.uint8)
        path = self.path(phase, epoch)
        fileio.remove_dead_temporaries(path, any_name=True)  # Left by a killed run.
        with fileio.atomic_write(path) as f:
            np.savez(f, **arrays)
        for old in self.paths()[self.keep :]:
            with contextlib.suppress(FileNotFoundError):
                os.remove(old)

    def latest(self, warn=None) -> Checkpoint | None:
        """The newest checkpoint that reads back completely.

        Args:
            warn: Called with a one-line message for each newer checkpoint
                that is damaged and skipped.

        Returns:
            A `Checkpoint`, or `None` if the folder holds none.

        Raises:
            keras_xception.errors.ConfigError: If there are checkpoints but
                none reads back; the message names the newest and says what
                to do.
        """
        paths = self.paths()
        problems = []
        for path in paths:
            try:
                return read(path)
            except ConfigError as err:
                problems.append(str(err))
                if warn is not None and path != paths[-1]:
                    warn(f"{err} Falling back to the checkpoint before it.")
        if not paths:
            return None
        raise ConfigError(
            f"{problems[0]} No earlier checkpoint is readable either; pass "
            f"--overwrite instead of --resume to start over (or delete {self.root!r})."
        )

    def clear(self):
        """Removes every checkpoint and temporary file a killed run left; keeps `best`."""
        stale = [
            os.path.join(self.root, n)
            for n in _listdir(self.root)
            if n.startswith((".checkpoint-", f".{BEST_WEIGHTS}."))
        ]
        for path in self.paths() + stale:
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)

    def remove_all(self):
        """Removes the checkpoints and `best`, for a run that starts over."""
        self.clear()
        with contextlib.suppress(FileNotFoundError):
            os.remove(self.best)


def _listdir(folder):
    try:
        return os.listdir(folder)
    except OSError:
        return []


class _Malformed(Exception):
    """A file that is not a checkpoint of this format (internal)."""


# The first bytes of a .npz file (a zip archive).
_ZIP_MAGIC = b"PK\x03\x04"


def read(path) -> Checkpoint:
    """Reads and checks one checkpoint file completely.

    Raises:
        keras_xception.errors.ConfigError: If it is truncated, corrupt or
            not a checkpoint; the message names the file.
    """
    import numpy as np

    try:
        with open(path, "rb") as f:
            data = f.read()
        if not data.startswith(_ZIP_MAGIC):
            raise _Malformed("not a checkpoint written by keras-xception")
        with np.load(io.BytesIO(data), allow_pickle=False) as archive:
            names = sorted(archive.files)
            if "info" not in names:
                raise _Malformed("not a checkpoint written by keras-xception")
            info = json.loads(bytes(archive["info"]).decode())
            model = [archive[n] for n in names if n.startswith("model/")]
            optimizer = [archive[n] for n in names if n.startswith("optimizer/")]
        if (
            not isinstance(info, dict)
            or info.get("format") != FORMAT
            or info.get("phase") not in PHASES
            or not isinstance(info.get("history"), dict)
            or not all(isinstance(v, list) for v in info["history"].values())
            or not isinstance(info.get("best"), (int, float, type(None)))
        ):
            raise _Malformed("not a checkpoint of this version")
        int(info.get("epoch"))
    except (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile,
            _Malformed) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        if "allow_pickle" in str(err):  # An object array: never written here.
            reason = "not a checkpoint written by keras-xception"
        raise ConfigError(
            f"The checkpoint {path!r} is damaged ({reason})."
        ) from None
    return Checkpoint(path, info, model, optimizer)


def save_best_weights(model, path):
    """Saves `model`'s weights to `path` (a `.weights.h5` file) atomically."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fileio.remove_dead_temporaries(path)
    with fileio.atomic_path(path, suffix=".weights.h5") as tmp:
        model.save_weights(tmp)
