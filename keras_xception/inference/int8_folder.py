"""An int8 IR folder as a model, and `keras-xception quantize`, which writes one.

A folder from `quantize_source` (`keras-xception quantize`) holds the
quantized OpenVINO IR (`model.xml`, `model.bin`) and `report.json`: the
agreement report of `keras_xception.inference.quantize`, plus what the
commands need to use the model without its Keras file (class names, input
size, input and score rules, whether it gives classes or features).
`keras_xception.source` reads such a folder as a model source of kind
`"int8"`, and `load_folder` gives the `Int8Model` that runs it.
"""

from __future__ import annotations

import errno
import os
import pathlib
import types

import numpy as np

from keras_xception.errors import ConfigError, WeightsError, counted
from keras_xception.inference.quantize import (
    IR_XML,
    check_thresholds,
    compile_int8,
    decode_images,
    prepare,
    quantize_model,
    read_report,
    require_int8,
    split,
    verdict,
    write_folder,
)


class Int8Model:
    """A quantized IR folder, run by OpenVINO: what the commands call a model.

    It offers what the commands use of a Keras model: `predict(x,
    batch_size=None, verbose=...)` (float32 out; an image holding a NaN or
    an infinity gets NaN outputs), `inputs` and `outputs` (objects with a
    `shape`) and `describe()`. It has no gradients: `explain` refuses it.

    Args:
        folder: The IR folder (`model.xml`, `model.bin`, `report.json`).
        report: Its `report.json`, read.
    """

    def __init__(self, folder, report):
        import openvino as ov

        self.folder = pathlib.Path(folder)
        self.report = report
        model = report.get("model", {})
        height, width = model.get("input_size", (299, 299))
        self.inputs = [types.SimpleNamespace(shape=(None, height, width, 3),
                                             dtype="float32")]
        self.outputs = [types.SimpleNamespace(shape=(None, model.get("units")))]
        try:
            # Its float parts as its report was measured (older folders: float32).
            settings = report.get("settings")
            recorded = (settings.get("inference_precision_hint", "f32")
                        if isinstance(settings, dict) else "f32")
            self._forward = compile_int8(ov.Core().read_model(str(self.folder / IR_XML)),
                                         recorded)
        except RuntimeError as err:  # OpenVINO's: a truncated or edited model.xml or .bin.
            lines = [line.strip() for line in str(err).splitlines() if line.strip()]
            raise WeightsError(
                f"{os.fspath(folder)!r}: OpenVINO cannot read its model.xml and "
                f"model.bin ({lines[-1] if lines else type(err).__name__}); the "
                "folder is damaged: write it again with `keras-xception quantize`."
            ) from None

    def predict(self, x, batch_size=None, verbose="auto", **kwargs):
        """Outputs for batch `x` (prepared as `report.json`'s input rule says)."""
        from keras_xception.checks import positive_int
        from keras_xception.inference import inputs

        x = np.asarray(x, dtype=np.float32)
        batch_size = 32 if batch_size is None else positive_int(batch_size, "batch_size")
        inputs.check_shape(self, x)
        parts = []
        for start in range(0, len(x), batch_size):
            chunk = x[start:start + batch_size]
            parts.append(inputs.mark_non_finite(self._forward(chunk),
                                                inputs.finite_rows(chunk)))
        return np.concatenate(parts, axis=0)

    def describe(self) -> dict:
        """What runs: OpenVINO int8, and the agreement report."""
        from keras_xception.inference import openvino as ov_runtime

        return {"runtime": ov_runtime.label(), "precision": "int8",
                "requested_precision": "int8", "threads": self._forward.threads,
                "float_parts": self._forward.hint,
                "reason": f"an int8 model quantized by keras-xception ({self.folder})",
                "int8": self.report}


def load_folder(folder) -> tuple[Int8Model, dict]:
    """The `Int8Model` in `folder` and its report.

    Raises:
        WeightsError: If `folder` is not an int8 folder written by
            `keras-xception quantize`.
    """
    require_int8()
    report = read_report(folder)
    if report is None or "model" not in report:
        raise WeightsError(
            f"{os.fspath(folder)!r} is a folder but not an int8 model from "
            "`keras-xception quantize` (model.xml, model.bin and its report.json)."
        )
    return Int8Model(folder, report), report


def already_int8(model, precision, calibration):
    """An `Int8Model` given to `optimize_for_inference`: returned as it is."""
    check_precision(model.folder, precision, calibration)
    return model


def check_precision(folder, precision, calibration) -> None:
    """Checks the precision asked of the int8 model in `folder`, before any work.

    Raises:
        ConfigError: For a precision other than `"auto"` or `"int8"`, or
            calibration images: an int8 model runs as it is.
    """
    if precision not in ("auto", "int8") or calibration is not None:
        raise ConfigError(
            f"{os.fspath(folder)} is an int8 model already; it runs as it is "
            "(precision 'auto' or 'int8', no calibration). Received: "
            f"precision={precision!r}"
            + (", calibration=..." if calibration is not None else "")
        )


def check_output(out) -> pathlib.Path:
    """Checks that an IR folder can be written at `out`, before any work.

    Raises:
        ConfigError: If `out` exists (an empty folder is allowed) or cannot
            be created.
    """
    from keras_xception.fileio import check_parent

    given = out
    out = check_parent(out, what="--output")
    empty = out.is_dir() and not out.is_symlink() and not any(out.iterdir())
    if (out.exists() or out.is_symlink()) and not empty:
        raise ConfigError(f"{os.fspath(given)} exists already; remove it or pick another path.")
    return out


def quantize_source(given, calibration, out, *, features=False, held_out=None,
                    thresholds=None, insist=False, progress=True) -> dict:
    """`keras-xception quantize`: the model `given` names, as an int8 IR folder.

    Everything checkable is checked first (the output, NNCF and OpenVINO,
    the thresholds, the source, the calibration folder); the folder is
    written under a temporary name and renamed into place when complete.

    Args:
        given: A model source (`keras_xception.source.open_source`).
        calibration: A folder or list of calibration images.
        out: The IR folder to write.
        features: Quantize the pooled Xception features (for `embed`)
            instead of the model's outputs.
        held_out: Images to check agreement on (default: a quarter of the
            calibration images, not calibrated on).
        thresholds: Overrides of `THRESHOLDS`.
        insist: Write the int8 model even below the thresholds.
        progress: Where a download reports progress.

    Returns:
        The report written to `out/report.json`.

    Raises:
        ConfigError: If `out` exists or cannot be written, the extra is
            missing, or agreement is below the thresholds (and not `insist`).
    """
    from keras_xception.checks import require
    from keras_xception.inference.fold import fold_batch_norm
    from keras_xception.source import IMAGENET, open_source

    out = check_output(out)
    require("int8", "keras-xception quantize")
    thresholds = check_thresholds(thresholds)
    for what, images in (("--calibration", calibration), ("--held-out", held_out)):
        if images is not None and not os.path.exists(images):
            raise ConfigError(f"{what} {os.fspath(images)!r} does not exist.")
    src = open_source(given, need_top=given == IMAGENET and not features, progress=progress)
    if src.kind == "int8":
        raise ConfigError(
            f"{src.given} is an int8 model already; quantize the float model it "
            "came from (its report.json names it under model.source)."
        )
    # The images are decoded before the model is loaded (and TensorFlow
    # imported): an empty folder, a file that is not an image, or a single
    # image with nothing to hold out fails in a second.
    pixels = decode_images(calibration, src.input_size, what="--calibration")
    held_pixels = None
    if held_out is not None:
        held_pixels = decode_images(held_out, src.input_size, what="--held-out")
    else:
        split(pixels)  # Raises with fewer than 2 images.
    require_int8()
    loaded = src.load(embed=features)
    folded = fold_batch_norm(loaded.model)
    quantized, report, _ = quantize_model(
        folded, prepare(folded, pixels),
        held_out=None if held_pixels is None else prepare(folded, held_pixels))
    passed, why = verdict(report, thresholds)
    if not passed and not insist:
        raise ConfigError(
            f"int8 agreement with float32 is below the thresholds ({why}) on "
            f"{counted(report['calibration']['held_out'], 'held-out image')}; nothing was "
            "written. Give more calibration images, or --insist to write it anyway."
        )
    classes = None if features else loaded.classes
    report = {key: value for key, value in report.items() if key not in ("cache", "path")}
    report["thresholds"] = thresholds
    report["passed"] = passed
    report["model"] = {
        "source": src.identity(),
        "outputs": "features" if features else "classes",
        "units": int(folded.outputs[0].shape[-1]),
        "input_size": list(src.input_size),
        "rescales_itself": loaded.rescales_itself,
        "score_rule": None if features else loaded.score_rule,
        "classes": classes,
        "class_names": list(src.class_names) if classes and src.class_names else None,
        "imagenet": bool(classes and src.synsets),
    }
    try:
        write_folder(out, quantized, report)
    except OSError as err:
        # Another process (a second quantize to the same OUT) put a file
        # there (EEXIST) or filled the folder (ENOTEMPTY) meanwhile.
        if err.errno not in (errno.EEXIST, errno.ENOTEMPTY):
            raise
        raise ConfigError(
            f"{out} appeared while the model was quantized; remove it or pick "
            "another path. Nothing was written."
        ) from None
    return report
