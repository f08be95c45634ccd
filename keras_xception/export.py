"""Export a model for serving without this package.

    from keras_xception.export import export_source

    export_source("imagenet", "xception.onnx", "onnx")

The model is read by `keras_xception.source` (`imagenet`, a weights file or
URL, with or without the classifier top, or a `.keras` model), passed
through `optimize_for_inference` (BatchNormalization folded into the
convolutions) unless `optimize=False`, and written with Keras's
`Model.export`:

- `saved_model`: a TensorFlow SavedModel directory, endpoint `serve`
  (also the `serving_default` signature); needs TensorFlow.
- `onnx`: one `.onnx` file (the `export` extra: tf2onnx, onnx).
- `litert`: one `.tflite` file for LiteRT / TensorFlow Lite (TensorFlow's
  converter; the `export` extra's `ai-edge-litert` runs it).
- `openvino`: an OpenVINO IR folder holding `model.xml` and `model.bin`
  (float32 weights; the `openvino` extra). OpenVINO picks bf16 by itself at
  load time where the CPU has it natively.

An exported model from weights takes preprocessed images
(`preprocess_input`: pixels scaled to [-1, 1]), shape `(batch, 299, 299,
3)`; a `.keras` model takes what it took before (see the source's input
rule).

Everything is written under a temporary name beside the output and renamed
into place when complete; temporaries an interrupted export left there are
removed by the next export to the same path.
"""

from __future__ import annotations

import contextlib
import errno
import os
import pathlib

# CLI format -> (Keras export format, suffix the output file needs or "").
FORMATS = {
    "saved_model": ("tf_saved_model", ""),
    "onnx": ("onnx", ".onnx"),
    "litert": ("litert", ".tflite"),
    "openvino": ("openvino", ""),
}

# The IR's file inside the openvino output folder (its weights: model.bin).
OPENVINO_XML = "model.xml"


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
    from keras_xception.checks import require
    from keras_xception.errors import ConfigError
    from keras_xception.fileio import check_parent

    if fmt not in FORMATS:
        raise ConfigError(
            f"The format must be one of {', '.join(sorted(FORMATS))}. Received: {fmt!r}"
        )
    _, suffix = FORMATS[fmt]
    given = os.fspath(out)
    out = check_parent(out, what="OUT")  # An empty OUT first of all.
    if suffix and given.endswith(("/", os.sep)):  # A folder, which pathlib drops.
        raise ConfigError(
            f"The {fmt} output is one file: give its name without a trailing "
            f"'/'. Received: {given}"
        )
    if suffix and out.suffix != suffix:
        raise ConfigError(
            f"The {fmt} output must be a file ending in {suffix!r}. Received: {given}"
        )
    if fmt == "onnx":
        require("export", "--format onnx")
    if fmt == "openvino":
        require("openvino", "--format openvino")
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
            if fmt == "onnx":
                from keras_xception.inference.onnxruntime import export_onnx

                export_onnx(model, target, [spec])
            else:
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


def export_source(given, out, fmt, *, optimize=True, progress=True):
    """Exports the model `given` names to `out` in format `fmt`.

    Everything checkable is checked before TensorFlow is imported: the
    output path and format, the converter's extra, and the source.

    Args:
        given: A model source (`keras_xception.source.open_source`).
        out: The output folder (saved_model, openvino) or file.
        fmt: A key of `FORMATS`.
        optimize: Fold BatchNormalization into the convolutions first.
        progress: Where a download reports progress.

    Returns:
        The path written.

    Raises:
        keras_xception.errors.ConfigError: If `out` cannot be written, or
            `given` is an int8 folder (from `keras-xception quantize`).
        keras_xception.errors.WeightsError: If the source cannot be read.
    """
    from keras_xception.source import open_source

    from keras_xception.fileio import remove_dead_temporaries
    from keras_xception.source import IMAGENET

    from keras_xception.errors import ConfigError

    out = check_output(out, fmt)
    # 'imagenet' means the whole model, with its classifier.
    src = open_source(given, need_top=given == IMAGENET, progress=progress)
    if src.kind == "int8":
        raise ConfigError(
            f"{src.given} is an int8 model, an OpenVINO IR folder already (model.xml, "
            "model.bin); export the float32 model it was quantized from."
        )
    model = src.load().model
    remove_dead_temporaries(out)
    if optimize:
        from keras_xception.inference import optimize_for_inference

        model = optimize_for_inference(model, runtime="keras")
    return export(model, out, fmt)
