"""One model source: what a user gives, turned into a model ready to use.

    from keras_xception import source

    src = source.open_source("kitchen.keras")     # checked; no TensorFlow yet
    src.classes, src.class_names, src.input_size  # from the file alone
    ready = src.load()                            # the Keras model and its rules
    probabilities = ready.scores(ready.model.predict(ready.prepare(pixels)))

Every command (`classify`, `explain`, `embed`, `classify --output`,
`export`, `benchmark`, `fine-tune`'s base weights) and the batch engines go
through here, so one file gives one answer everywhere.

What a source can be:

- `"imagenet"`: the official weights, fetched into the Keras cache and
  verified (with the classifier top where the command needs one, else the
  smaller file without it);
- the path of a weights file: legacy Keras 2 `.h5` or Keras 3 `.weights.h5`,
  with or without the classifier top (the file says which);
- an http(s) URL of a weights file (downloaded into the cache once);
- a `.keras` model file: a flat `Xception`, `build_classifier`'s model, a
  `keras.Sequential`, or a model with the Xception base nested as keras.io's
  transfer-learning guide builds it.
- an int8 folder written by `keras-xception quantize` (OpenVINO IR and
  `report.json`, which holds the class names, input size and input rule);
  it loads as an `inference.int8_folder.Int8Model`, which predicts but has no
  gradients (`explain` refuses it).

`open_source` does everything that needs no TensorFlow, once per file and
process: it resolves the file (downloading it if need be), checks it (h5py
for weights, the archive's `config.json` for a `.keras` file), hashes it
(the cache's recorded digests where there are some) and reads what the
commands check their arguments against: the class count and names, the
input size, whether there is a classifier. `Source.load` then builds the
model.

The input rule. A model either takes pixels in [0, 255] and scales them
itself, or takes `preprocess_input`'s [-1, 1]. The rule, the same for every
command: the model scales its own input when a `Rescaling` or
`Normalization` layer lies on the path from its input to its Xception base
(in any enclosing model, or in the base before `block1_conv1`); otherwise
pixels go through `preprocess_input`. Weights files give the plain Xception,
which never scales its own input.

The score rule. A score is always a probability: the model's own output
when it ends in a softmax or a sigmoid, else the softmax of its outputs
(taken as logits), or their sigmoid for a single output. A model with a
single output (a sigmoid, or one logit) is a binary classifier: its output
is the probability of class 1, and it is given as two classes, `1 - p` and
`p`, so that names saved for its two classes line up. `Loaded.score_rule`
says which rule, in words a command prints.

A model must have one output; one with several is refused.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import zipfile
import zlib

from keras_xception import architecture
from keras_xception.checks import one_line
from keras_xception.errors import ConfigError, WeightsError

IMAGENET = "imagenet"
WEIGHTS = "weights"
KERAS = "keras"
INT8 = "int8"  # A folder from `keras-xception quantize` (inference.quantize).

# What every `.keras` archive holds: the model's configuration and its
# weights (`model.weights.h5`, or `.npz`).
KERAS_CONFIG = "config.json"
KERAS_WEIGHTS = "model.weights"
KERAS_METADATA = "metadata.json"

# The Xception base's first and last convolutional layers' names.
BASE_FIRST = "block1_conv1"
BASE_LAST = "block14_sepconv2_act"

# How a model's outputs become probabilities (see the module docstring).
MODEL_SOFTMAX = "the model's softmax"
MODEL_SIGMOID = "the model's sigmoid"
SOFTMAX_OF_LOGITS = "the softmax of the model's outputs"
SIGMOID_OF_LOGIT = "the sigmoid of the model's output"
_SIGMOIDS = (MODEL_SIGMOID, SIGMOID_OF_LOGIT)

# One entry per file and process: (path, stat identity) -> sha256.
_digests: dict[tuple, str] = {}
# One `Source` per (given, need_top) and process, while the file is unchanged.
_opened: dict[tuple, tuple[tuple, "Source"]] = {}


@dataclasses.dataclass(frozen=True)
class Source:
    """A checked model source; small and picklable (no Keras objects).

    Attributes:
        given: What the user gave (`"imagenet"`, a path or a URL), as text.
        kind: `"weights"` (a weights file), `"keras"` (a `.keras` model)
            or `"int8"` (a folder from `keras-xception quantize`).
        path: The local file, absolute.
        sha256: The file's SHA-256 hex digest: its identity.
        has_top: Whether the model has a classifier.
        classes: Its number of classes, or `None` without a classifier
            (or, for a `.keras` file, when its configuration does not say).
        class_names: One name per class (ImageNet's, or those saved in the
            `.keras` file), or `None`: the classes are then their indices.
        synsets: The ImageNet synsets (`n01440764`, ...) when the classes are
            ImageNet's, else `None`.
        input_size: `(height, width)` images are resized to.
        channels: Input channels of the weights (3 for images).
        score_rule: How its outputs become probabilities (`MODEL_SOFTMAX`,
            ...), as its configuration says; `None` without a classifier or
            where the file does not tell (`Loaded.score_rule` always does).
    """

    given: str
    kind: str
    path: str
    sha256: str
    has_top: bool
    classes: int | None
    class_names: tuple[str, ...] | None
    synsets: tuple[str, ...] | None
    input_size: tuple[int, int]
    channels: int = 3
    score_rule: str | None = None

    def identity(self) -> dict:
        """What makes two runs' results comparable: the file's name and hash."""
        return {"source": os.path.basename(self.path), "source_kind": self.kind,
                "sha256": self.sha256}

    def class_name(self, index: int) -> str:
        """The name of class `index`: its saved or ImageNet name, else the index."""
        if self.class_names is not None:
            return self.class_names[index]
        return str(index)

    def check_top(self, top: int | None, *, option: str = "--top") -> int:
        """`top` checked against the classes (`None`: 5, or fewer classes).

        Raises:
            ConfigError: If the model has no classifier, or `top` is more
                than its classes or `MAX_TOP`.
        """
        from keras_xception.checks import MAX_TOP, positive_int

        if not self.has_top and self.kind == INT8:
            raise ConfigError(
                f"{self.given} is an int8 model of the features (`keras-xception "
                "quantize --features`), for embed; for classes, quantize without "
                "--features."
            )
        if not self.has_top:
            raise ConfigError(
                f"{self.given} is an Xception base without a classifier, so it "
                "gives features, not classes: pass weights with the classifier "
                "top, or a fine-tuned .keras model (from `keras-xception "
                "fine-tune`)."
            )
        limit = min(self.classes or MAX_TOP, MAX_TOP)
        if top is None:
            return min(5, limit)
        if positive_int(top, option) > limit:
            what = "the model's classes" if self.classes == limit else "the most shown"
            raise ConfigError(
                f"{option} must be from 1 to {limit}, {what}. Received: {option} {top}"
            )
        return int(top)

    def check_embed(self) -> None:
        """Checks that the model gives embeddings (`load(embed=True)`), before loading it.

        Raises:
            ConfigError: If it is an int8 classifier: an int8 model gives
                only the outputs it was quantized for.
        """
        if self.kind == INT8 and self.has_top:
            raise ConfigError(
                f"{self.given} is an int8 classifier; embeddings need an int8 "
                "model of the features: keras-xception quantize ... --features."
            )

    def load(self, *, embed: bool = False, pooling: str | None = None) -> "Loaded":
        """Builds (weights) or loads (`.keras`) the model; imports Keras.

        Args:
            embed: Return the pooled features of the Xception base
                (`(N, 2048)`, global average pooling) instead of the model's
                outputs; for a `.keras` model, computed through its own
                layers before the base (its input rule is kept).
            pooling: For weights without the classifier top and
                `embed=False`: `None`, `"avg"` or `"max"`, as `Xception`.

        Returns:
            A `Loaded`.

        Raises:
            WeightsError: If Keras cannot load the file.
            ConfigError: If a `.keras` model has no Xception base (for
                `embed`).
        """
        if self.kind == INT8:
            return _load_int8(self, embed=embed)
        if self.kind == WEIGHTS:
            model = _build_from_weights(self, embed=embed, pooling=pooling)
        else:
            model = _load_keras(self.path, self.class_names)
            if embed:
                model = _embedding_model(model)
        if len(model.outputs) != 1:
            raise ConfigError(_MANY_OUTPUTS.format(given=self.given, n=len(model.outputs)))
        own = rescales_itself(model)
        rule = None if embed or not self.has_top else score_rule(model)
        classes = None
        if rule is not None:
            units = model.outputs[0].shape[-1]
            classes = 2 if units == 1 and rule in _SIGMOIDS else units
            if self.class_names is not None and len(self.class_names) != classes:
                raise ConfigError(
                    f"{self.given} saves {len(self.class_names)} class names for "
                    f"{classes} classes; save the model again with its class names."
                )
        return Loaded(self, model, own, rule, classes)


@dataclasses.dataclass
class Loaded:
    """A source's Keras model with its input and score rules.

    Attributes:
        source: The `Source` it came from.
        model: The `keras.Model`.
        rescales_itself: Whether the model takes pixels in [0, 255] (see
            the module docstring); else `prepare` applies `preprocess_input`.
        score_rule: How `scores` turns outputs into probabilities (one of
            the module's `MODEL_SOFTMAX` ... constants), `None` for features.
        classes: The classes `scores` gives (2 for a single sigmoid or
            logit output), `None` for features.
    """

    source: Source
    model: object
    rescales_itself: bool
    score_rule: str | None
    classes: int | None = None

    def prepare(self, pixels):
        """Pixels in [0, 255] (float, `(N, H, W, 3)`) as the model takes them.

        `pixels` itself when the model scales its own input, else a new
        array; `pixels` is never changed.
        """
        if self.rescales_itself:
            return pixels
        from keras_xception.preprocessing import preprocess_input

        return preprocess_input(pixels)

    def scores(self, outputs):
        """The probabilities for the model's `outputs` (see `score_rule`)."""
        return probabilities(outputs, self.score_rule)


def probabilities(outputs, rule):
    """`outputs` (N, classes) as probabilities by `rule` (float32, a new array).

    A single sigmoid or logit output `p` becomes two classes, `1 - p` and `p`.
    """
    import numpy as np

    outputs = np.asarray(outputs, np.float32)
    if rule == SIGMOID_OF_LOGIT:
        with np.errstate(over="ignore"):
            outputs = (1.0 / (1.0 + np.exp(-outputs))).astype(np.float32)
    elif rule in (MODEL_SOFTMAX, MODEL_SIGMOID, None):
        outputs = outputs.copy()
    else:
        shifted = outputs - outputs.max(axis=-1, keepdims=True)
        e = np.exp(shifted)
        return (e / e.sum(axis=-1, keepdims=True)).astype(np.float32)
    if rule in _SIGMOIDS and outputs.shape[-1] == 1:
        return np.concatenate([1 - outputs, outputs], axis=-1)
    return outputs


# --- opening: no TensorFlow -----------------------------------------------------


def open_source(given, *, need_top: bool = False, progress=True) -> Source:
    """Resolves and checks `given`; see the module docstring.

    Args:
        given: `"imagenet"`, a weights or `.keras` file, or an http(s) URL
            of a weights file.
        need_top: Whether the command needs a classifier: picks the
            `"imagenet"` file, and refuses weights without the top.
        progress: Where a download reports progress (`True`, `False` or a
            text stream such as `sys.stderr`).

    Returns:
        A `Source`. The same one for the same file in the same process: the
        file is checked and hashed once (a later call only finds it again:
        a `stat` for a local file).

    Raises:
        WeightsError: If the file cannot be fetched, is missing, or is not
            Xception weights or a Keras model.
        ConfigError: If `need_top` and the source has no classifier.
    """
    from keras_xception import weights as weights_lib

    if isinstance(given, os.PathLike):
        given = os.fspath(given)
    if not isinstance(given, str) or not given:
        raise ConfigError(
            "A model source must be 'imagenet', the path of a weights or "
            f".keras file, or an http(s) URL of one. Received: {given!r}"
        )
    key = (given, need_top)
    if given != IMAGENET and not weights_lib.is_url(given):
        try:
            local = pathlib.Path(given).expanduser()
        except RuntimeError:  # `~user` for no such user.
            raise WeightsError(f"No such file: {given!r}. Check the path.") from None
        if not local.exists() and given.endswith(".keras"):
            raise WeightsError(f"Model file not found: {given!r}. Check the path.")
        if local.is_dir() and any((local / name).exists()
                                  for name in ("report.json", "model.xml", "model.bin")):
            source = _open_int8(given, local.absolute())
            if need_top and not source.has_top:
                source.check_top(None)  # Raises, naming the source.
            return source
        if local.is_dir():
            raise WeightsError(
                f"{given!r} is a folder; give a weights file (.h5, .weights.h5) "
                "or a .keras model file."
            )
    path = pathlib.Path(weights_lib.resolve(given, include_top=need_top,
                                            progress=progress)).absolute()
    stamp = _stamp(path)
    cached = _opened.get(key)
    if cached is not None and cached[0] == (str(path),) + stamp:
        return cached[1]
    if path.suffix == ".keras" or zipfile.is_zipfile(path):
        source = _open_keras(given, path)
    else:
        source = _open_weights(given, path)
    if need_top and not source.has_top:
        source.check_top(None)  # Raises, naming the source.
    _opened[key] = ((str(path),) + stamp, source)
    return source


def _stamp(path) -> tuple:
    st = os.stat(path)
    return (st.st_size, st.st_ino, st.st_mtime_ns, st.st_ctime_ns)


def sha256(path) -> str:
    """The SHA-256 of `path`, computed once per file content and process.

    Files in the weights cache use the digests recorded there
    (`weights.verified`), so a verified download is never hashed again.
    """
    from keras_xception.weights import cache, integrity, verified

    path = pathlib.Path(path).absolute()
    key = (str(path),) + _stamp(path)
    if key not in _digests:
        if cache.contains(path):
            _digests[key] = verified.digests(path)["sha256"]
        else:
            _digests[key] = integrity.file_digests(path, ("sha256",))["sha256"]
    return _digests[key]


def _open_weights(given, path) -> Source:
    from keras_xception.preprocessing import imagenet_classes
    from keras_xception.weights import cache, integrity
    from keras_xception.weights.validate import inspect

    # A file that is no weights at all (a photo, a text): say what a model can
    # be. A broken weights file, or one in the cache, gets inspect's advice.
    if not cache.contains(path):
        problem = integrity.content_problem(path)
        if problem is not None and problem.kind in ("image", "not_hdf5"):
            raise WeightsError(
                f"{path} is not a model ({problem.what}). Give 'imagenet', an "
                "Xception weights file (.h5, .weights.h5), a .keras model file, "
                "or an http(s) URL of a weights file."
            )
    summary = inspect(path)
    names = synsets = None
    if summary.include_top and summary.classes == 1000:
        pairs = imagenet_classes()
        synsets = tuple(s for s, _ in pairs)
        names = tuple(n for _, n in pairs)
    size = architecture.DEFAULT_SIZE
    return Source(
        given=str(given), kind=WEIGHTS, path=str(path), sha256=sha256(path),
        has_top=summary.include_top, classes=summary.classes,
        class_names=names, synsets=synsets, input_size=(size, size),
        channels=summary.channels,
        score_rule=MODEL_SOFTMAX if summary.include_top else None,
    )


def _open_keras(given, path) -> Source:
    """Checks a `.keras` archive and reads its facts from `config.json`."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
            missing = [part for part, present in (
                (KERAS_CONFIG, KERAS_CONFIG in names),
                (f"{KERAS_WEIGHTS}.*",
                 any(n.startswith(KERAS_WEIGHTS + ".") for n in names)),
            ) if not present]
            if missing:
                raise WeightsError(
                    f"{given} is a zip archive but not a Keras model: it has no "
                    f"{' or '.join(missing)}. Save the model with model.save()."
                )
            config = json.loads(archive.read(KERAS_CONFIG))
            metadata = {}
            if KERAS_METADATA in names:
                metadata = json.loads(archive.read(KERAS_METADATA))
    except WeightsError:
        raise
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, zlib.error, RuntimeError,
            NotImplementedError, RecursionError) as err:
        raise WeightsError(
            f"{given} is not a readable .keras model file: {one_line(err)}. "
            "Is it complete? Save the model again with model.save()."
        ) from None
    if not isinstance(config, dict):
        raise WeightsError(
            f"{given} is not a Keras model file: its {KERAS_CONFIG} holds no "
            "model configuration. Save the model with model.save()."
        )
    facts = _config_facts(config)
    if facts.outputs > 1:
        raise ConfigError(_MANY_OUTPUTS.format(given=given, n=facts.outputs))
    class_names = metadata.get("class_names") if isinstance(metadata, dict) else None
    if class_names is not None:
        if not isinstance(class_names, list) or not all(
                isinstance(c, (str, int)) and not isinstance(c, bool) for c in class_names):
            raise WeightsError(
                f"{given} has class names that are not a list of names in its "
                f"{KERAS_METADATA}. Received: class_names={one_line(repr(class_names), 80)}"
            )
        class_names = tuple(str(c) for c in class_names)
        if facts.classes is not None and len(class_names) != facts.classes:
            class_names = None  # Saved for another head: indices are honest.
    classes = facts.classes
    if classes is None and class_names is not None:
        classes = len(class_names)
    synsets = None
    if class_names is None and classes == 1000:
        from keras_xception.preprocessing import imagenet_classes

        pairs = imagenet_classes()
        synsets = tuple(s for s, _ in pairs)
        class_names = tuple(n for _, n in pairs)
    return Source(
        given=str(given), kind=KERAS, path=str(path), sha256=sha256(path),
        has_top=facts.has_top, classes=classes, class_names=class_names,
        synsets=synsets, input_size=facts.input_size, score_rule=facts.score_rule,
    )


def _open_int8(given, folder) -> Source:
    """An int8 folder's facts, from its `report.json` (no OpenVINO yet)."""
    from keras_xception.inference.quantize import IR_BIN, read_report

    report = read_report(folder)
    model = (report or {}).get("model")
    if not isinstance(model, dict):
        absent = [name for name in ("model.xml", "model.bin", "report.json")
                  if not (folder / name).is_file()]
        raise WeightsError(
            f"{given} is a folder but not an int8 model from `keras-xception "
            "quantize` (model.xml, model.bin and its report.json)"
            + (f"; it lacks {', '.join(absent)}." if absent else
               "; its report.json is not one quantize wrote.")
        )
    wrong = _wrong_int8_fact(model)
    if wrong:
        raise WeightsError(
            f"{given} is not a usable int8 model: its report.json has no valid "
            f"model.{wrong} (was it edited?); write it again with `keras-xception "
            "quantize`."
        )
    classes = model.get("classes")
    names = model.get("class_names")
    synsets = None
    if model.get("imagenet"):
        from keras_xception.preprocessing import imagenet_classes

        pairs = imagenet_classes()
        synsets, names = tuple(s for s, _ in pairs), [n for _, n in pairs]
    return Source(
        given=str(given), kind=INT8, path=str(folder), sha256=sha256(folder / IR_BIN),
        has_top=classes is not None, classes=classes,
        class_names=tuple(names) if names else None, synsets=synsets,
        input_size=tuple(model["input_size"]), score_rule=model.get("score_rule"),
    )


def _wrong_int8_fact(model) -> str | None:
    """The first field of an int8 report's `model` that quantize would not have written."""
    def count(value):
        return isinstance(value, int) and not isinstance(value, bool) and value > 0

    size = model.get("input_size")
    classes = model.get("classes")
    names = model.get("class_names")
    checks = (
        ("outputs", model.get("outputs") in ("classes", "features")),
        ("units", count(model.get("units"))),
        ("input_size", isinstance(size, list) and len(size) == 2 and all(map(count, size))),
        ("rescales_itself", isinstance(model.get("rescales_itself"), bool)),
        ("classes", classes is None if model.get("outputs") == "features"
         else count(classes)),
        ("class_names", names is None or isinstance(names, list) and len(names) == classes
         and all(isinstance(n, str) for n in names)),
        ("score_rule", model.get("score_rule") is None
         or isinstance(model.get("score_rule"), str)),
    )
    return next((name for name, ok in checks if not ok), None)


def _load_int8(source: Source, *, embed) -> "Loaded":
    from keras_xception.inference.int8_folder import load_folder

    if embed:
        source.check_embed()
    model, report = load_folder(source.path)
    facts = report["model"]
    return Loaded(source, model, facts["rescales_itself"], source.score_rule,
                  source.classes)


_MANY_OUTPUTS = ("{given} is a model with {n} outputs; keras-xception takes a "
                 "model with one (class scores or features). Keep one output "
                 "with keras.Model(model.input, model.outputs[0]) and save it.")


@dataclasses.dataclass(frozen=True)
class _Facts:
    input_size: tuple[int, int]
    has_top: bool
    classes: int | None
    score_rule: str | None = None
    outputs: int = 1


def _config_facts(config) -> _Facts:
    """Input size and classifier of a `.keras` model, from its configuration.

    Reads Keras 3's serialized `Functional` and `Sequential` configurations;
    what it cannot tell is left to the loaded model (`classes` `None`, the
    default input size).
    """
    size = architecture.DEFAULT_SIZE
    try:
        inner = config["config"]
        layers = inner["layers"]
        shape = None
        for layer in layers:
            if layer.get("class_name") == "InputLayer":
                shape = layer["config"].get("batch_shape")
                break
        if shape is None:
            shape = inner.get("build_input_shape")
        height, width = (shape[1] or size, shape[2] or size) if shape else (size, size)
        input_size = (int(height), int(width))
    except (KeyError, TypeError, IndexError, ValueError, AttributeError):
        input_size = (size, size)
    try:
        has_top, units, activation, outputs = _output_facts(config)
    except (KeyError, TypeError, IndexError, ValueError, AttributeError, RecursionError):
        return _Facts(input_size, True, None)
    rule = None
    if has_top and activation is not None:
        rule = _RULES.get(activation) or (
            SIGMOID_OF_LOGIT if units == 1 else
            SOFTMAX_OF_LOGITS if units is not None else None)
    classes = 2 if units == 1 and rule in _SIGMOIDS else units
    return _Facts(input_size, has_top, classes, rule, outputs)


_RULES = {"softmax": MODEL_SOFTMAX, "sigmoid": MODEL_SIGMOID}


def _output_facts(config) -> tuple[bool, int | None, str | None, int]:
    """Whether the configured model ends in a classifier, its units, its
    activation and its number of outputs."""
    kind = config.get("class_name")
    inner = config["config"]
    layers = inner["layers"]
    if kind == "Sequential":
        chain = [l for l in layers if l.get("class_name") != "InputLayer"]
    else:
        by_name = {l.get("name") or l["config"].get("name"): l for l in layers}
        outputs = inner["output_layers"]
        if isinstance(outputs, dict):
            return True, None, None, len(outputs)
        if outputs and isinstance(outputs[0], str):  # A single [name, i, j].
            outputs = [outputs]
        if len(outputs) != 1:
            return True, None, None, len(outputs)
        chain = [by_name[outputs[0][0]]]
    last = chain[-1]
    name = last.get("class_name")
    if name in ("Functional", "Sequential", "Model"):
        return _output_facts(last)
    activation = last["config"].get("activation")
    if not isinstance(activation, str):
        activation = None  # A custom or serialized callable: from the loaded model.
    if name == "Dense":
        return True, int(last["config"]["units"]), activation, 1
    if name in ("Softmax", "Sigmoid"):  # The layer, or keras.ops.softmax/sigmoid.
        return True, _units_before(last, chain), name.lower(), 1
    if name == "Activation":
        return True, _units_before(last, chain), activation, 1
    return False, None, None, 1


def _units_before(layer, chain):
    """The width of what feeds `layer` (a Softmax or Activation), or `None`."""
    if len(chain) > 1 and chain[-2].get("class_name") == "Dense":  # Sequential.
        return int(chain[-2]["config"]["units"])
    try:  # Functional: the input tensor's serialized shape.
        units = layer["inbound_nodes"][0]["args"][0]["config"]["shape"][-1]
    except (KeyError, IndexError, TypeError):
        return None
    return int(units) if isinstance(units, int) else None


# --- loading: Keras --------------------------------------------------------------


def _build_from_weights(source: Source, *, embed, pooling):
    import keras

    from keras_xception.model import Xception

    size = architecture.DEFAULT_SIZE
    if source.has_top and not embed:
        return Xception(weights=source.path, classes=source.classes)
    if source.has_top:
        full = Xception(weights=source.path, classes=source.classes)
        return keras.Model(full.input, full.get_layer("avg_pool").output,
                           name="xception_embed")
    return Xception(include_top=False, weights=source.path,
                    input_shape=(size, size, source.channels),
                    pooling="avg" if embed else pooling)


def _load_keras(path, class_names):
    import keras

    try:
        model = keras.saving.load_model(path, compile=False)
    except (OSError, ValueError, TypeError, KeyError, EOFError, AttributeError,
            zipfile.BadZipFile, zlib.error, RuntimeError, NotImplementedError) as err:
        raise WeightsError(f"Cannot load the Keras model {path}: {one_line(err)}") from None
    if class_names is not None:
        model.class_names = class_names
    return model


def base_path(model):
    """The models `[model, ..., base]` down to the Xception base, or `None`."""
    from keras_xception.explain import _find_base

    return _find_base(model)


def _graph(model):
    from keras_xception.explain import _graph as graph

    return graph(model)


def rescales_itself(model) -> bool:
    """Whether `model` takes pixels in [0, 255]: the input rule.

    True when a `Rescaling` or `Normalization` layer comes before the
    Xception base on the path from the input to it: in any model that
    encloses the base (before the base's own layer), or in the base before
    `block1_conv1`. A model without an Xception base is judged by any such
    layer before its first convolution.
    """
    import keras

    scaling = (keras.layers.Rescaling, keras.layers.Normalization)

    def scales(layer) -> bool:
        """A scaling layer, or a sub-model (a preprocessing block) holding one."""
        if isinstance(layer, scaling):
            return True
        graph = _graph(layer)
        return graph is not None and any(scales(inner) for inner in graph.layers)

    path = base_path(model) or [model]
    for depth, current in enumerate(path):
        graph = _graph(current)
        if graph is None:
            continue
        stop = path[depth + 1] if depth + 1 < len(path) else None
        for layer in graph.layers:
            if layer is stop or layer.name == BASE_FIRST:
                break
            if stop is None and isinstance(layer, keras.layers.Conv2D):
                break
            if scales(layer):
                return True
    return False


def score_rule(model) -> str:
    """How `model`'s outputs become probabilities: one of `MODEL_SOFTMAX` ..."""
    import keras

    from keras_xception.explain import _final_op

    op = _final_op(model)
    activation = None
    if isinstance(op, (keras.layers.Dense, keras.layers.Activation)):
        activation = op.activation
    elif type(op).__name__ == "Softmax":  # The layer, or keras.ops.softmax's operation.
        activation = keras.activations.softmax
    elif type(op).__name__ == "Sigmoid":  # keras.ops.sigmoid's operation.
        activation = keras.activations.sigmoid
    if activation is keras.activations.softmax:
        return MODEL_SOFTMAX
    if activation is keras.activations.sigmoid:
        return MODEL_SIGMOID
    units = model.outputs[0].shape[-1]
    return SIGMOID_OF_LOGIT if units == 1 else SOFTMAX_OF_LOGITS


def _embedding_model(model):
    """The pooled Xception features of `model`, through its own input layers.

    Where the base is called directly by `model` (flat, `build_classifier`,
    keras.io's nested base, a Sequential), the features are computed from
    `model`'s own input, so its preprocessing layers stay in front; a base
    nested deeper is used on its own.
    """
    import keras

    path = base_path(model)
    if path is None:
        raise ConfigError(
            f"The model {model.name!r} has no Xception base (no layers "
            f"{BASE_FIRST!r} and {BASE_LAST!r}), so it gives no Xception "
            "embedding. Pass an Xception model or one built on an Xception base."
        )
    base = path[-1]
    pool = keras.layers.GlobalAveragePooling2D(name="avg_pool")
    if len(path) == 1:
        features = _graph(base).get_layer(BASE_LAST).output
        return keras.Model(_graph(model).inputs, pool(features), name="xception_embed")
    if len(path) == 2:
        outer = _graph(model)
        # Keras keys a graph's nodes as "<id of the layer>_ib-<node index>".
        nodes = [node for i, node in enumerate(base._inbound_nodes)
                 if f"{id(base)}_ib-{i}" in outer._nodes]
        if len(nodes) == 1:
            features = nodes[0].output_tensors[0]
            if len(features.shape) == 4:
                return keras.Model(outer.inputs, pool(features), name="xception_embed")
    inner = _graph(base)
    return keras.Model(inner.inputs, pool(inner.get_layer(BASE_LAST).output),
                       name="xception_embed")
