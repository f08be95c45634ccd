"""Checking a weights file against the Xception architecture, with h5py only.

Two layouts are read, whatever the file's suffix:

- legacy Keras 2 HDF5 (the official `xception_weights_tf_dim_ordering_tf_kernels*.h5`
  files): root attribute `layer_names`, one group per layer with a
  `weight_names` attribute; layers are matched by position, since the official
  files give the residual layers automatic names (`conv2d_1`, ...);
- Keras 3 `.weights.h5`: `layers/<kind>[_<n>]/vars/<i>`, where `<n>` numbers
  the layers of one class in the model's order.

Both are put in `architecture.weight_layout` order and every weight's shape is
compared with it. Only the file's metadata is read for that, which takes
milliseconds; `read_weights` then reads the arrays.
"""

from __future__ import annotations

import collections
import dataclasses
import os
import pathlib
import re

import h5py
import numpy as np

from keras_xception import architecture
from keras_xception.errors import WeightsError
from keras_xception.checks import one_line
from keras_xception.weights import cache, integrity, registry

LEGACY = "legacy Keras 2 HDF5"
KERAS3 = "Keras 3 .weights.h5"

# Keras 3 `.weights.h5` group names (snake_case class names) of weighted layers.
_KERAS3_KINDS = {
    "conv2d": "Conv2D",
    "separable_conv2d": "SeparableConv2D",
    "batch_normalization": "BatchNormalization",
    "dense": "Dense",
}
_KERAS3_KEY = re.compile(r"(?P<kind>.+?)(?:_(?P<index>\d+))?")

# How the two ways of calling the checks describe what the file was checked for.
_BUILT = "the model was built with"
_ASKED = "it was checked for"


@dataclasses.dataclass(frozen=True)
class StoredLayer:
    """One weighted layer as the file stores it.

    Attributes:
        key: The layer's group in the file (`block1_conv1`, `conv2d_3`, ...).
        kind: The Keras class for Keras 3 files (their group names say it),
            `None` for legacy files.
        datasets: Path of each weight's dataset, in Keras's weight order.
        shapes: Shape of each weight.
    """

    key: str
    kind: str | None
    datasets: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]


@dataclasses.dataclass(frozen=True)
class Summary:
    """What a valid Xception weights file holds.

    Attributes:
        path: The file.
        layout: `LEGACY` or `KERAS3`.
        include_top: Whether it has the `predictions` classifier.
        classes: Classes of the classifier, `None` without one.
        channels: Input channels of the first convolution.
        layers: The stored layers, in `architecture.weight_layout` order.
    """

    path: pathlib.Path
    layout: str
    include_top: bool
    classes: int | None
    channels: int
    layers: tuple[StoredLayer, ...]

    def describe(self) -> str:
        """One line for people, e.g. for `keras-xception weights verify`."""
        top = (
            f"with the classifier top ({self.classes} classes)"
            if self.include_top
            else "without the classifier top"
        )
        return (
            f"Xception weights {top}, {self.channels}-channel input, "
            f"{len(self.layers)} weighted layers, {self.layout} layout"
        )


def _fail_file(path, what: str) -> WeightsError:
    """`path` is `what` (a phrase), with what to do about it.

    Deleting is advised only for a file in the package's cache, which the next
    use downloads again; a file the user named is theirs to keep.
    """
    if cache.contains(path):
        advice = (
            "It is in the weights cache: delete it, and the next use downloads "
            "it again (`keras-xception weights download` for the official files)."
        )
    else:
        advice = (
            "It is not usable as weights: pass an Xception weights file instead "
            "(a Keras 2 `.h5` or a Keras 3 `.weights.h5` written by "
            "model.save_weights), or 'imagenet'; if this was one, download or "
            "copy the file again."
        )
    return WeightsError(f"{path} is {what}. {advice}")


def _malformed(path, what: str) -> WeightsError:
    return _fail_file(path, f"a malformed weights file: {what}")


def _open(path: pathlib.Path) -> h5py.File:
    if not path.exists():
        raise WeightsError(
            f"Weights file not found: {path}. Check the path, or pass "
            "weights='imagenet' to download the official file."
        )
    integrity.check_regular(path)  # A FIFO or a device is never opened.
    problem = integrity.content_problem(path)
    if problem is not None:
        if problem.kind == "zip":
            raise WeightsError(
                f"{path} is {problem.what}. Load a whole model with "
                "keras.saving.load_model, or save its weights with "
                "model.save_weights('name.weights.h5') and pass that file."
            )
        raise _fail_file(path, problem.what)
    try:
        return h5py.File(path, "r")
    except OSError as err:
        raise _fail_file(path, f"an HDF5 file that h5py cannot open ({err})") from err


def _text(value) -> str:
    return value.decode("utf8") if isinstance(value, bytes) else str(value)


def _legacy_layers(root: h5py.Group, path) -> list[StoredLayer]:
    top = root.get("top_level_model_weights")  # Optional, as Keras 2 reads it.
    if top is not None and not isinstance(top, h5py.Group):
        raise _malformed(path, "its top_level_model_weights is not a group")
    out = []
    for name in (_text(n) for n in root.attrs["layer_names"]):
        group = root.get(name)
        if not isinstance(group, h5py.Group):
            raise _fail_file(
                path, f"incomplete: it lists layer {name!r} but has no group for it"
            )
        weight_names = [_text(w) for w in group.attrs.get("weight_names", ())]
        if not weight_names:
            continue
        shapes = []
        for weight in weight_names:
            dataset = group.get(weight)
            if not isinstance(dataset, h5py.Dataset):
                raise _fail_file(
                    path,
                    f"incomplete: layer {name!r} lists weight {weight!r} but "
                    "holds no such dataset",
                )
            shapes.append(tuple(dataset.shape))
        datasets = tuple(f"{group.name}/{weight}" for weight in weight_names)
        out.append(StoredLayer(name, None, datasets, tuple(shapes)))
    return out


def _keras3_layers(layers: h5py.Group, path) -> tuple[list[StoredLayer], list[str]]:
    """Weighted layers of a Keras 3 file, and the keys of nested models.

    A layer without a `vars` group holds no weights, as Keras reads it; any
    other entry of the wrong kind (a dataset for a group, or the reverse)
    makes the file malformed.
    """
    found, nested = [], []
    for key in layers:
        group = layers.get(key)
        if not isinstance(group, h5py.Group):
            raise _malformed(
                path, f"{layers.name}/{key} is not a group, as a layer's entry must be"
            )
        if isinstance(group.get("layers"), h5py.Group):
            nested.append(key)
        if "vars" not in group:
            continue
        variables = group.get("vars")
        if not isinstance(variables, h5py.Group):
            raise _malformed(
                path, f"{group.name}/vars is not a group, as a layer's weights must be"
            )
        if not len(variables):
            continue
        indices = sorted(variables, key=lambda i: int(i) if i.isdigit() else -1)
        for i in indices:
            if not isinstance(variables.get(i), h5py.Dataset):
                raise _malformed(
                    path,
                    f"{variables.name}/{i} is a group where a weight's dataset should be",
                )
        match = _KERAS3_KEY.fullmatch(key)
        kind = _KERAS3_KINDS.get(match["kind"], match["kind"])
        found.append(
            StoredLayer(
                key,
                kind,
                tuple(f"{variables.name}/{i}" for i in indices),
                tuple(tuple(variables[i].shape) for i in indices),
            )
        )
    return found, nested


def _index(layer: StoredLayer) -> int:
    match = _KERAS3_KEY.fullmatch(layer.key)
    return int(match["index"] or 0)


def _expected_counts(include_top: bool) -> collections.Counter:
    return collections.Counter(e.kind for e in architecture.weight_layout(include_top))


def _snake(kind: str) -> str:
    for snake, name in _KERAS3_KINDS.items():
        if name == kind:
            return snake
    return kind


def _count_text(counts: collections.Counter) -> str:
    return ", ".join(f"{n} {_snake(kind)}" for kind, n in sorted(counts.items()))


def _another_architecture(
    path, found: int, detail: str, nested: list[str]
) -> WeightsError:
    n_notop = len(architecture.weight_layout(False))
    message = (
        f"{path} is not an Xception weights file: it holds {found} weighted "
        f"layers{detail}, where Xception has {n_notop} without the classifier "
        f"top and {n_notop + 1} with it."
    )
    if nested:
        message += (
            f" Its group layers/{nested[0]} is a nested model, as in a model "
            "built on top of Xception: save the Xception sub-model's weights on "
            "their own with model.get_layer(NAME).save_weights("
            "'xception.weights.h5') and pass that file."
        )
    else:
        message += (
            " It looks like another architecture's weights (or an incomplete "
            "file); pass a file saved from an Xception model, or weights='imagenet'."
        )
    return WeightsError(message)


def _stored(f: h5py.File, path) -> tuple[str, bool, list[StoredLayer]]:
    """Layout, whether it has the top, and weighted layers in layout order."""
    root = f
    if "layer_names" not in f.attrs and isinstance(f.get("model_weights"), h5py.Group):
        root = f["model_weights"]  # A whole Keras 2 model saved with model.save.
    n_notop = len(architecture.weight_layout(False))
    if "layer_names" in root.attrs:
        found = _legacy_layers(root, path)
        if len(found) not in (n_notop, n_notop + 1):
            raise _another_architecture(path, len(found), "", [])
        return LEGACY, len(found) == n_notop + 1, found
    if isinstance(f.get("layers"), h5py.Group):
        if "vars" in f and not isinstance(f.get("vars"), h5py.Group):
            raise _malformed(
                path, "its top-level vars is not a group, as Keras 3 writes it"
            )
        found, nested = _keras3_layers(f["layers"], path)
        counts = collections.Counter(layer.kind for layer in found)
        for include_top in (False, True):
            if counts == _expected_counts(include_top):
                break
        else:
            detail = f" ({_count_text(counts)})" if counts else ""
            raise _another_architecture(path, len(found), detail, nested)
        queues = {
            kind: sorted((s for s in found if s.kind == kind), key=_index, reverse=True)
            for kind in counts
        }
        ordered = [
            queues[entry.kind].pop()
            for entry in architecture.weight_layout(include_top)
        ]
        return KERAS3, include_top, ordered
    keys = ", ".join(sorted(f.keys())[:8]) or "none"
    raise WeightsError(
        f"{path} is an HDF5 file but not Keras weights: it has neither the "
        "Keras 2 `layer_names` attribute nor the Keras 3 `layers` group "
        f"(top-level keys: {keys}). Pass a file written by model.save_weights."
    )


def _summarize(f, path, **checks) -> Summary:
    """`_check`, with any failure of h5py on a damaged file as one `WeightsError`."""
    try:
        return _check(f, path, **checks)
    except WeightsError:
        raise
    except (OSError, KeyError, RuntimeError, TypeError, ValueError) as err:
        raise _malformed(path, f"reading its structure failed ({one_line(err)})") from err


def _check(f, path, *, include_top, classes, channels, context) -> Summary:
    """The `Summary` of an open file, checked against the model's needs."""
    layout, has_top, stored = _stored(f, path)
    first = stored[0].shapes[0] if stored[0].shapes else ()
    file_channels = first[2] if len(first) == 4 else None
    last = stored[-1].shapes
    file_classes = None
    if has_top and len(last) == 2 and len(last[1]) == 1:
        file_classes = last[1][0]
    # First, whether this is Xception at all (for the file's own classes and
    # channels), so that the variant messages below only name real Xception files.
    expected = architecture.weight_layout(
        has_top, classes=file_classes or 1000, channels=file_channels or 3
    )
    for position, (entry, layer) in enumerate(zip(expected, stored), start=1):
        if layer.shapes != entry.shapes:
            raise WeightsError(
                f"{path} is not Xception's weights: weighted layer #{position} "
                f"({layer.key!r}) holds shapes {list(layer.shapes)}, where "
                f"Xception's {entry.name} ({entry.kind}) holds {list(entry.shapes)}. "
                "It looks like another architecture's weights; pass the file "
                "saved from an Xception model, or weights='imagenet'."
            )
        for dataset in layer.datasets:
            if f[dataset].dtype.kind != "f":
                raise WeightsError(
                    f"{path}: weight {dataset} has dtype {f[dataset].dtype}, "
                    "not floating point; it is not a Keras weights file."
                )
    names = {entry.include_top: entry.fname for entry in registry.WEIGHTS}
    if include_top is not None and include_top != has_top:
        if has_top:
            raise WeightsError(
                f"{path}: this file has the classifier top; {context} "
                "include_top=False. Build the model with include_top=True, or "
                f"use the file without the top ({names[False]})."
            )
        raise WeightsError(
            f"{path}: this file has no classifier top (feature extractor only); "
            f"{context} include_top=True. Build the model with include_top=False, "
            f"or use the file with the top ({names[True]})."
        )
    if channels is not None and file_channels != channels:
        raise WeightsError(
            f"{path}: the file's weights take {file_channels}-channel input; "
            f"{context} channels={channels}. Build the model for "
            f"{file_channels}-channel input (input_shape=(height, width, "
            f"{file_channels})), or use weights made for {channels} channels."
        )
    if has_top and classes is not None and file_classes != classes:
        raise WeightsError(
            f"{path}: the file's classifier has {file_classes} classes; "
            f"{context} classes={classes}. Build the model with "
            f"classes={file_classes} to use this classifier, or build it with "
            f"include_top=False and load the no-top file ({names[False]}) to "
            "train a new classifier."
        )
    return Summary(path, layout, has_top, file_classes, file_channels, tuple(stored))


def _as_path(path) -> pathlib.Path:
    if not isinstance(path, (str, os.PathLike)):
        raise WeightsError(
            f"Expected the path of a weights file. Received: path={path!r}"
        )
    return pathlib.Path(path).expanduser()


def inspect(path, *, include_top=None) -> Summary:
    """Checks a file's structure and says what it holds.

    Args:
        path: A legacy Keras 2 `.h5` or Keras 3 `.weights.h5` file.
        include_top: `True` or `False` to require that variant; `None`
            accepts either.

    Returns:
        A `Summary`.

    Raises:
        WeightsError: If the file is missing, not a complete HDF5 file, or
            not Xception weights (of the requested variant).
    """
    path = _as_path(path)
    with _open(path) as f:
        return _summarize(
            f,
            path,
            include_top=include_top,
            classes=None,
            channels=None,
            context=_ASKED,
        )


def verify(path, *, include_top=None, file_hash=None) -> None:
    """Checks that a file holds complete, well-formed Xception weights.

    In order: the file exists and is a complete HDF5 file (not an HTML page,
    not truncated), its digest matches `file_hash` when given, its layout is
    legacy Keras 2 or Keras 3 `.weights.h5`, and every weight has the count
    and shape Xception needs.

    Args:
        path: The file to check, whatever its suffix.
        include_top: `True` or `False` to require that variant; `None`
            accepts either.
        file_hash: Expected md5 or sha256 hex digest, or `None` to skip.

    Raises:
        WeightsError: Naming what is wrong and what to do.
    """
    path = _as_path(path)
    with _open(path) as f:
        if file_hash is not None:
            mismatch = integrity.hash_mismatch(path, file_hash)
            if mismatch is not None:
                algorithm, received = mismatch
                advice = (
                    "It is in the weights cache: delete it and download it again."
                    if cache.contains(path)
                    else "Download or copy it again, or check that the digest "
                    "is the one for this file."
                )
                raise WeightsError(
                    f"{path} has {algorithm} {received}, expected "
                    f"{file_hash.lower()}: the file is corrupt or not the one "
                    f"expected. {advice}"
                )
        _summarize(
            f,
            path,
            include_top=include_top,
            classes=None,
            channels=None,
            context=_ASKED,
        )


def read_weights(
    path, *, include_top, classes=1000, channels=3
) -> list[list[np.ndarray]]:
    """Reads Xception weights in `architecture.weight_layout` order.

    The layout (legacy Keras 2 or Keras 3 `.weights.h5`) is detected from the
    contents, and the structure is checked against the model before any
    array is read.

    Args:
        path: The weights file.
        include_top: Whether the model has the `predictions` classifier.
        classes: Classes of the model's classifier.
        channels: Input channels of the model.

    Returns:
        One list of arrays per `architecture.weight_layout(include_top, ...)`
        entry, ready for `layer.set_weights`.

    Raises:
        WeightsError: If the file does not fit the model; the message says
            what the file holds (the other variant, another architecture,
            another number of classes or channels, a truncated file).
    """
    path = _as_path(path)
    with _open(path) as f:
        summary = _summarize(
            f,
            path,
            include_top=include_top,
            classes=classes,
            channels=channels,
            context=_BUILT,
        )
        try:
            return [
                [np.asarray(f[name][()]) for name in layer.datasets]
                for layer in summary.layers
            ]
        except OSError as err:
            raise _fail_file(
                path, f"damaged: reading its arrays failed ({err})"
            ) from err
