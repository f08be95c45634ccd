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

The exported model takes preprocessed images (`preprocess_input`: pixels
scaled to [-1, 1]), shape `(batch, 299, 299, 3)`.
"""

from __future__ import annotations

import pathlib
import sys

# CLI format -> (Keras export format, suffix the output file needs or "").
FORMATS = {
    "saved_model": ("tf_saved_model", ""),
    "onnx": ("onnx", ".onnx"),
    "litert": ("litert", ".tflite"),
}


def add_parser(subparsers):
    parser = subparsers.add_parser(
        "export",
        help="export a model as a SavedModel, ONNX or LiteRT file",
        description="Export Xception for serving. WEIGHTS_OR_MODEL is "
        "'imagenet' (the model with its classifier), a weights file or URL, "
        "or a .keras model file.",
    )
    parser.add_argument("source", metavar="WEIGHTS_OR_MODEL")
    parser.add_argument("out", metavar="OUT",
                        help="output directory (saved_model) or file")
    parser.add_argument("--format", choices=sorted(FORMATS), default="saved_model",
                        help="default: saved_model")
    parser.add_argument("--no-optimize", action="store_true",
                        help="keep the BatchNormalization layers instead of "
                        "folding them into the convolutions")
    parser.set_defaults(run=run)


def load_source(source):
    """Builds or loads the model `source` names.

    Args:
        source: `"imagenet"`, a weights file (`.h5`, `.weights.h5`) or its
            http(s) URL, or a `.keras` model file.

    Returns:
        A `keras.Model`.

    Raises:
        keras_xception.errors.WeightsError: If the file is missing or not
            Xception weights.
    """
    from keras_xception import architecture
    from keras_xception.errors import WeightsError

    text = str(source)
    if text.endswith(".keras"):
        path = pathlib.Path(text).expanduser()
        if not path.is_file():
            raise WeightsError(f"Model file not found: {path}")
        import keras

        try:
            return keras.saving.load_model(path, compile=False)
        except (OSError, ValueError) as err:
            raise WeightsError(f"Cannot load the Keras model {path}: {err}") from None

    from keras_xception import weights

    # Found (for "imagenet", fetched and verified: the file with the top)
    # and checked before TensorFlow is imported (by `Xception`).
    path = weights.resolve(text, include_top=True)
    summary = weights.validate.inspect(path)
    from keras_xception.model import Xception

    size = architecture.DEFAULT_SIZE
    return Xception(
        weights=str(path),
        include_top=summary.include_top,
        classes=summary.classes or 1000,
        input_shape=None if summary.include_top else (size, size, summary.channels),
    )


def check_output(out, fmt):
    """Raises `ConfigError` if `fmt` cannot be written to `out`; returns `out`.

    Checked before the model is built, so a wrong path fails at once.
    """
    from keras_xception.errors import ConfigError

    _, suffix = FORMATS[fmt]
    out = pathlib.Path(out)
    if suffix and out.suffix != suffix:
        raise ConfigError(
            f"The {fmt} output must be a file ending in {suffix!r}. Received: {out}"
        )
    if fmt == "onnx":
        _require("tf2onnx", "onnx")
    if out.exists() and (out.is_file() or any(out.iterdir())):
        raise ConfigError(f"{out} exists already; remove it or pick another path.")
    return out


def export(model, out, fmt):
    """Writes `model` to `out` in CLI format `fmt`; returns the path written.

    The model is written into a temporary folder beside `out` and moved into
    place when complete, so a failed export leaves nothing behind.
    """
    import shutil
    import tempfile

    import keras

    out = check_output(out, fmt)
    out.parent.mkdir(parents=True, exist_ok=True)
    # One positional input; spelled out because Keras's ONNX exporter
    # refuses a model that has never been called otherwise.
    spec = keras.InputSpec(
        shape=tuple(model.inputs[0].shape), dtype=model.inputs[0].dtype
    )
    staging = pathlib.Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        written = staging / out.name
        model.export(str(written), format=FORMATS[fmt][0], verbose=False,
                     input_signature=[spec])
        if out.is_dir():  # an empty folder the user made for it
            out.rmdir()
        written.rename(out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out


def _require(*modules):
    import importlib.util

    from keras_xception.errors import ConfigError

    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise ConfigError(
            f"This export format needs {', '.join(missing)}: "
            "pip install 'keras-xception[export]'"
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
