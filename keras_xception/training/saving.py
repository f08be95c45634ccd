"""Saving a trained classifier as one `.keras` file that carries its class names.

`save_classifier` writes the class names (and any other entries, such as
the training history) into the archive's `metadata.json`, next to Keras's
own `keras_version`. Keras never reads that file back, so
`keras.saving.load_model(path)` works unchanged with no `custom_objects`;
`read_class_names(path)` returns the names, and `load_classifier(path)`
does both and sets `model.class_names`.
"""

from __future__ import annotations

import json
import os
import zipfile

from keras_xception import fileio
from keras_xception.errors import ConfigError

METADATA_FILE = "metadata.json"


def check_output_name(path) -> str:
    """`path` as a string, if it names a `.keras` file.

    Raises:
        keras_xception.errors.ConfigError: If it does not end in `.keras`.
    """
    path = os.fspath(path)
    if not path.endswith(".keras"):
        raise ConfigError(
            f"The output file name must end in `.keras`. Received: {path!r}"
        )
    return path


def save_classifier(model, path, *, class_names=None, metadata=None, overwrite=True):
    """Saves `model` as a `.keras` file with its class names, atomically.

    The file is written under a temporary name in the same folder and then
    renamed (`keras_xception.fileio.atomic_path`), so `path` is either the
    complete new model or left untouched. The class names go into the
    archive's `metadata.json` (see the module docstring); the model itself
    loads with plain `keras.saving.load_model`.

    Args:
        model: The model to save.
        path: Destination; must end in `.keras`. Missing folders are made.
        class_names: Names of the classes in output order; defaults to
            `model.class_names`.
        metadata: More JSON-serializable entries for `metadata.json`.
        overwrite: Whether an existing file at `path` may be replaced.

    Raises:
        keras_xception.errors.ConfigError: If `path` does not end in
            `.keras`, the class names do not match the model's outputs, or
            `path` exists and `overwrite` is false.
    """
    path = check_output_name(path)
    if class_names is None:
        class_names = getattr(model, "class_names", None)
    entries = dict(metadata or {})
    if class_names is not None:
        class_names = [str(c) for c in class_names]
        units = model.outputs[0].shape[-1]
        # A single output (a sigmoid or one logit) is a binary classifier:
        # two classes, its output the probability of the second.
        classes = 2 if units == 1 else units
        if units is not None and len(class_names) != classes:
            raise ConfigError(
                f"The model has {units} outputs but {len(class_names)} class "
                f"names were given: {class_names!r}"
                + (" (a single output takes two: its classes 0 and 1)" if units == 1 else "")
            )
        entries["class_names"] = class_names
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fileio.remove_dead_temporaries(path)  # Left by a killed save.
    try:
        with fileio.atomic_path(path, suffix=".keras", overwrite=overwrite) as tmp:
            model.save(tmp)
            if entries:
                _add_metadata(tmp, entries)
    except FileExistsError:
        raise ConfigError(
            f"{path!r} already exists; pass --overwrite (`overwrite=True`) to "
            "replace it."
        ) from None


def _add_metadata(path, entries):
    """Adds `entries` to `metadata.json` inside the `.keras` archive `path`."""
    with fileio.atomic_path(path, suffix=".keras") as rewritten:
        with zipfile.ZipFile(path) as src, zipfile.ZipFile(rewritten, "w") as dst:
            for info in src.infolist():
                data = src.read(info.filename)
                if info.filename == METADATA_FILE:
                    metadata = json.loads(data)
                    metadata.update(entries)
                    data = json.dumps(metadata).encode()
                dst.writestr(info, data)


def read_metadata(path) -> dict:
    """The `metadata.json` of a `.keras` file, as a dict.

    Raises:
        keras_xception.errors.ConfigError: If `path` is not a readable
            `.keras` archive.
    """
    path = os.fspath(path)
    try:
        with zipfile.ZipFile(path) as archive:
            return json.loads(archive.read(METADATA_FILE))
    except (OSError, KeyError, zipfile.BadZipFile, ValueError) as err:
        raise ConfigError(
            f"Cannot read {path!r} as a `.keras` model file: {err}"
        ) from None


def read_class_names(path):
    """The class names saved by `save_classifier`, or `None` if there are none.

    Raises:
        keras_xception.errors.ConfigError: If `path` is not a readable
            `.keras` archive.
    """
    names = read_metadata(path).get("class_names")
    return None if names is None else tuple(names)


def load_classifier(path, *, compile=False):
    """Loads a saved classifier and sets `model.class_names` from the file.

    Args:
        path: A `.keras` file written by `save_classifier`.
        compile: Passed to `keras.saving.load_model`.

    Returns:
        The `keras.Model`.
    """
    import keras

    model = keras.saving.load_model(os.fspath(path), compile=compile)
    names = read_class_names(path)
    if names is not None:
        model.class_names = names
    return model
