"""`keras-xception export`: write a model for serving without this package.

The model is built from `imagenet`, a weights file or URL (with or without the
classifier top; the file says which), or loaded from a `.keras` model file,
passed through `optimize_for_inference` (BatchNormalization folded into the
convolutions) unless `--no-optimize` is given, and written with Keras's
`Model.export`:

- `saved_model`: a TensorFlow SavedModel directory, endpoint `serve`
  (also the `serving_default` signature); needs TensorFlow.
- `onnx`: one `.onnx` file (the `export` extra: tf2onnx, onnx).
- `litert`: one `.tflite` file for LiteRT / TensorFlow Lite (TensorFlow's
  converter; the `export` extra's `ai-edge-litert` runs it).
- `openvino`: an OpenVINO IR folder holding `model.xml` and `model.bin`
  (float32 weights; the `openvino` extra). OpenVINO picks bf16 by itself at
  load time where the CPU has it natively.

The exported model takes preprocessed images (`preprocess_input`: pixels
scaled to [-1, 1]), shape `(batch, 299, 299, 3)`.
"""

from __future__ import annotations

import contextlib
import errno
import pathlib
import sys
import zipfile

# CLI format -> (Keras export format, suffix the output file needs or "").
FORMATS = {
    "saved_model": ("tf_saved_model", ""),
    "onnx": ("onnx", ".onnx"),
    "litert": ("litert", ".tflite"),
    "openvino": ("openvino", ""),
}

# The IR's file inside the openvino output folder (its weights: model.bin).
OPENVINO_XML = "model.xml"

# What every `.keras` archive holds: the model's configuration and its
# weights (`model.weights.h5`, or `.npz`).
KERAS_CONFIG = "config.json"
KERAS_WEIGHTS = "model.weights"


def add_parser(subparsers):
    parser = subparsers.add_parser(
        "export",
        help="export a model as a SavedModel, ONNX, LiteRT or OpenVINO file",
        description="Export Xception for serving. WEIGHTS_OR_MODEL is "
        "'imagenet' (the model with its classifier), a weights file or URL, "
        "or a .keras model file.",
    )
    parser.add_argument("source", metavar="WEIGHTS_OR_MODEL")
    parser.add_argument("out", metavar="OUT",
                        help="output directory (saved_model, openvino) or file")
    parser.add_argument("--format", choices=sorted(FORMATS), default="saved_model",
                        help="default: saved_model")
    parser.add_argument("--no-optimize", action="store_true",
                        help="keep the BatchNormalization layers instead of "
                        "folding them into the convolutions")
    parser.set_defaults(run=run)


def check_keras_file(path):
    """Checks, without importing Keras, that `path` looks like a `.keras` model.

    Args:
        path: The `.keras` file named on the command line.

    Returns:
        `path` as a `pathlib.Path` (the user's `~` expanded).

    Raises:
        keras_xception.errors.WeightsError: If `path` is missing, a folder,
            not a zip archive (a text file, a truncated download) or an
            archive without a model's configuration and weights.
    """
    from keras_xception.errors import WeightsError

    path = pathlib.Path(path).expanduser()
    if not path.exists():
        raise WeightsError(f"Model file not found: {path}")
    if not path.is_file():
        raise WeightsError(f"{path} is a folder, not a .keras model file.")
    try:
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
    except (zipfile.BadZipFile, OSError) as err:
        raise WeightsError(
            f"{path} is not a .keras model file (a zip archive): {_one_line(err)}. "
            "Is it complete? Save the model again with model.save()."
        ) from None
    missing = [
        part for part, present in (
            (KERAS_CONFIG, KERAS_CONFIG in names),
            (f"{KERAS_WEIGHTS}.*", any(n.startswith(KERAS_WEIGHTS + ".") for n in names)),
        ) if not present
    ]
    if missing:
        raise WeightsError(
            f"{path} is a zip archive but not a Keras model: it has no "
            f"{' or '.join(missing)}. Save the model with model.save()."
        )
    return path


def check_source(source):
    """Checks the model's source before TensorFlow is imported.

    A `.keras` file is checked with `check_keras_file`. For anything else
    the weights file is found (for `imagenet`, fetched and verified: the file
    with the top) and its layout read.

    Args:
        source: `"imagenet"`, a weights file (`.h5`, `.weights.h5`) or its
            http(s) URL, or a `.keras` model file.

    Returns:
        `(path, summary)`: the local file, and for weights its
        `keras_xception.weights.validate` summary (None for a `.keras` file).

    Raises:
        keras_xception.errors.WeightsError: If the file is missing or not
            Xception weights or a Keras model.
    """
    text = str(source)
    if text.endswith(".keras"):
        return check_keras_file(text), None
    from keras_xception import weights

    path = weights.resolve(text, include_top=True, progress=sys.stderr)
    return path, weights.validate.inspect(path)


def load_source(source):
    """Builds or loads the model `source` names.

    Args:
        source: `"imagenet"`, a weights file (`.h5`, `.weights.h5`) or its
            http(s) URL, or a `.keras` model file.

    Returns:
        A `keras.Model`.

    Raises:
        keras_xception.errors.WeightsError: If the file is missing, not
            Xception weights, or a `.keras` file Keras cannot load.
    """
    from keras_xception import architecture
    from keras_xception.errors import WeightsError

    path, summary = check_source(source)
    if summary is None:
        import keras

        try:
            return keras.saving.load_model(path, compile=False)
        except (OSError, ValueError, TypeError, KeyError, EOFError,
                zipfile.BadZipFile) as err:
            raise WeightsError(
                f"Cannot load the Keras model {path}: {_one_line(err)}"
            ) from None

    from keras_xception.model import Xception

    size = architecture.DEFAULT_SIZE
    return Xception(
        weights=str(path),
        include_top=summary.include_top,
        classes=summary.classes or 1000,
        input_shape=None if summary.include_top else (size, size, summary.channels),
    )


def check_output(out, fmt):
    """Checks that `fmt` can be written to `out`, before any work is done.

    Args:
        out: The output folder (saved_model) or file.
        fmt: A key of `FORMATS`.

    Returns:
        `out` as an absolute `pathlib.Path` (the user's `~` expanded).

    Raises:
        keras_xception.errors.ConfigError: If `out` has the wrong suffix,
            exists (only an empty folder may be given for saved_model or
            openvino), or
            cannot be created (a parent is a file or not writable), or the
            format's converter is not installed.
    """
    from keras_xception.errors import ConfigError
    from keras_xception.fileio import check_parent

    _, suffix = FORMATS[fmt]
    given = out
    out = pathlib.Path(out)
    if suffix and out.suffix != suffix:
        raise ConfigError(
            f"The {fmt} output must be a file ending in {suffix!r}. Received: {out}"
        )
    out = check_parent(out, what="OUT")
    if fmt == "onnx":
        _require("tf2onnx", "onnx")
    if fmt == "openvino":
        _require("openvino", extra="openvino")
    empty_folder = out.is_dir() and not out.is_symlink() and not any(out.iterdir())
    if (out.exists() or out.is_symlink()) and not (empty_folder and not suffix):
        raise ConfigError(
            f"{given} exists already; remove it or pick another path."
        )
    return out


def export(model, out, fmt):
    """Writes `model` to `out` in CLI format `fmt`; returns the path written.

    The model is written under a temporary name beside `out` and renamed
    into place when complete (`keras_xception.fileio.atomic_path`), so a
    failed or interrupted export leaves nothing at `out`.

    Raises:
        keras_xception.errors.ConfigError: If `out` cannot be written (see
            `check_output`), also when it appears during the export.
    """
    import keras

    from keras_xception.errors import ConfigError
    from keras_xception.fileio import atomic_path

    out = check_output(out, fmt)
    out.parent.mkdir(parents=True, exist_ok=True)
    keras_format, suffix = FORMATS[fmt]
    # One positional input; spelled out because Keras's ONNX exporter
    # refuses a model that has never been called otherwise.
    spec = keras.InputSpec(
        shape=tuple(model.inputs[0].shape), dtype=model.inputs[0].dtype
    )
    directory = not suffix
    try:
        with atomic_path(out, suffix=suffix, directory=directory,
                         overwrite=False) as tmp:
            target = tmp
            if fmt == "openvino":
                target = tmp / OPENVINO_XML  # and model.bin beside it
            elif directory:
                tmp.rmdir()  # The exporter creates its folder itself.
            quiet = contextlib.nullcontext()
            if fmt == "openvino":
                from keras_xception.inference.openvino import no_telemetry

                quiet = no_telemetry()
            with quiet:
                model.export(str(target), format=keras_format, verbose=False,
                             input_signature=[spec])
    except OSError as err:
        if err.errno not in (errno.EEXIST, errno.ENOTEMPTY, errno.EISDIR):
            raise
        raise ConfigError(
            f"{out} appeared while the model was exported; remove it or pick "
            "another path. Nothing was written."
        ) from None
    return out


def _one_line(err, limit=300):
    """`err`'s message on one line, at most `limit` characters."""
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _require(*modules, extra="export"):
    import importlib.util

    from keras_xception.errors import ConfigError

    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise ConfigError(
            f"This export format needs {', '.join(missing)}: "
            f"pip install 'keras-xception[{extra}]'"
        )


def run(args) -> int:
    check_output(args.out, args.format)
    model = load_source(args.source)
    from keras_xception.inference import optimize_for_inference

    if not args.no_optimize:
        model = optimize_for_inference(model)
    out = export(model, args.out, args.format)
    print(f"wrote {out} ({args.format})", file=sys.stderr)
    return 0
