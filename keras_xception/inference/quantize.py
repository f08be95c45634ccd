"""int8 inference: post-training quantization with NNCF, calibrated and reported.

    model = optimize_for_inference(model, precision="int8", calibration="photos/")
    model.describe()["int8"]      # the agreement report (also report.json)

How. The folded float32 model is converted to OpenVINO as the `openvino`
runtime converts it (`openvino.convert`), and NNCF's post-training
quantization (`nncf.quantize`) inserts int8 quantizers, their ranges taken
from the calibration images. NNCF no longer quantizes TensorFlow models
itself, so the OpenVINO model is what it quantizes. The settings are
`SETTINGS`; scripts/int8_accuracy.py measures them (docs/inference.md,
"int8"): NNCF's defaults (per-channel symmetric weights, per-tensor
activations, fast bias correction) except that the depthwise convolutions
(OpenVINO's `GroupConvolution`) of the middle and exit flows stay in float:
quantizing them is where the accuracy went (the feature cosine to float32
fell to 0.967 on held-out photos, against 0.991 with them kept), and they
hold under 2% of the model's multiply-adds.

Calibration images are an array of images already prepared as the model
takes them, a folder, or a list of image files (decoded by
`keras_xception.images.decode`, resized to the model's input and prepared
by its input rule, `keras_xception.source.rescales_itself`).

The agreement report. Images held out from calibration (`held_out`, or
every fourth calibration image when none are given) run through the int8
model and through the float32 OpenVINO model, and the report gives the
minimum and mean cosine of the outputs, for a model that ends in a
classifier the top-1 agreement and the top-5 overlap, and the speed of
both (images/s on the held-out batch, same process). Below the thresholds
(`THRESHOLDS`: top-1 agreement 0.97, mean cosine 0.99) `optimize_for_inference`
warns (`AccuracyWarning`) and returns the float32 model, unless
`insist=True`.

The cache. A quantized model is an OpenVINO IR folder (`model.xml`,
`model.bin`, `report.json`) in the Keras cache
(`$KERAS_HOME/models/xception_int8/<key>`), keyed by a hash of the model
(its configuration and weights), of the calibration and held-out images,
and of NNCF's and OpenVINO's versions and `SETTINGS`; it is written
atomically (`keras_xception.fileio`), so only the first call pays for
calibration. `keras-xception quantize` writes the same folder, with the
model's class names and input rule in `report.json`, where the user asks
(`int8_folder.quantize_source`); `keras_xception.source` reads such a
folder back as a model (`int8_folder.Int8Model`).
"""

from __future__ import annotations

import datetime
import errno
import hashlib
import json
import os
import pathlib
import time
import warnings

import numpy as np

from keras_xception.checks import install_hint, require, require_tensorflow_backend
from keras_xception.errors import ConfigError, counted

NAME = "NNCF and OpenVINO"
EXTRA = install_hint("int8")

# What a quantized model must keep of float32's outputs on held-out images.
THRESHOLDS = {"top1_agreement": 0.97, "mean_cosine": 0.99}

# The quantizer's settings (see the module docstring and docs/inference.md).
SETTINGS = {
    "preset": "PERFORMANCE",             # symmetric int8 weights and activations
    # The depthwise halves of these SeparableConv2D layers (a regular
    # expression on the Keras layer names) stay float: the middle and exit
    # flows' (28 of 34); the entry flow's six, on the largest activations,
    # are int8, which is where int8's speed comes from.
    "float_depthwise": r"block(1[34]_sepconv[12]|([5-9]|1[0-2])_sepconv[123])",
    "fast_bias_correction": True,
    "subset_size": 300,                  # at most this many calibration images
    # OpenVINO's precision for the parts left float (the depthwise
    # convolutions above): "auto" is bf16 where the CPU computes it natively
    # (`float_hint`), else f32. On a Zen 4 CPU (avx512_bf16, no AMX) bf16
    # there kept the features' minimum cosine above 0.98 at every
    # calibration size where f32 fell just under it, at the same speed; on
    # an AMX Xeon the two agreed equally (docs/inference.md, "int8").
    "inference_precision_hint": "auto",
}
# Bumped when what is written changes, so older cache entries are not read.
FORMAT = "keras_xception int8 1"

IR_XML = "model.xml"
IR_BIN = "model.bin"
REPORT = "report.json"
CACHE_FOLDER = "xception_int8"

# At most this many images of a folder or list are decoded (each is about
# 1 MB at 299x299): a quarter held out leaves SETTINGS' subset_size, NNCF's
# most, to calibrate on. A larger set is sampled evenly over its sorted files.
MAX_IMAGES = 400

# Images timed for the report's speeds (the held-out batch, at most this many).
SPEED_BATCH = 8

# How many times a model was quantized in this process (a cache hit does not
# count): what a test reads to see that a second call did no calibration.
quantized_count = 0


def installed():
    """Whether NNCF and OpenVINO can be imported."""
    from keras_xception.checks import missing

    return not missing("int8")


def require_int8():
    """NNCF and OpenVINO, checked before any work."""
    require_tensorflow_backend("openvino", "converts the model for int8")
    require("int8", "precision='int8'")


def versions() -> dict:
    """NNCF's and OpenVINO's versions (part of the cache key)."""
    import nncf
    import openvino

    return {"nncf": nncf.__version__, "openvino": openvino.__version__.split("-")[0]}


# --- calibration images ----------------------------------------------------------


def images_for(model, given, *, what="calibration") -> np.ndarray:
    """`given` as a float32 batch prepared as `model` takes it.

    Args:
        model: The single-input `keras.Model` to calibrate.
        given: An array `(N, H, W, C)` already prepared for the model; a
            folder (searched as `keras_xception.images.find_images` does);
            or a list of image files.
        what: The argument's name, for messages.

    Raises:
        ConfigError: If `given` holds no image, or an array has another
            image shape than the model's input.
        keras_xception.errors.ImageError: If a file cannot be read.
    """
    shape = tuple(int(d) if d is not None else None for d in model.inputs[0].shape[1:])
    if isinstance(given, np.ndarray) or hasattr(given, "__array__") and not isinstance(
            given, (str, bytes, os.PathLike, list, tuple)):
        batch = np.asarray(given, dtype=np.float32)
        if batch.ndim != 4 or any(e is not None and e != r
                                  for e, r in zip(shape, batch.shape[1:])):
            raise ConfigError(
                f"{what} images must be a batch of shape (N, {', '.join(map(str, shape))}), "
                f"prepared as the model takes them. Received: shape={batch.shape}"
            )
    else:
        batch = prepare(model, decode_images(given, (shape[0] or 299, shape[1] or 299),
                                             what=what))
    if len(batch) == 0:
        raise ConfigError(f"{what} holds no image. Received: {what}={_shown(given)}")
    return np.ascontiguousarray(batch, dtype=np.float32)


def decode_images(given, size, *, what="calibration") -> np.ndarray:
    """The images of a folder or list of files, decoded to `size`: pixels in [0, 255].

    Needs no model (nor TensorFlow), so the command line decodes its
    calibration images before the model is loaded: a folder without images
    or with a file that is not one fails in a second, not after the load.
    Of more than `MAX_IMAGES` files, `MAX_IMAGES` evenly spaced ones (in
    `find_images`' order) are decoded, so memory stays bounded.

    Raises:
        ConfigError: If `given` holds no image.
        keras_xception.errors.ImageError: If a file cannot be read.
    """
    from keras_xception import images

    paths = [given] if isinstance(given, (str, bytes, os.PathLike)) else list(given)
    files = images.find_images(paths)
    if not files:
        raise ConfigError(f"{what} holds no image. Received: {what}={_shown(given)}")
    if len(files) > MAX_IMAGES:
        files = [files[i * len(files) // MAX_IMAGES] for i in range(MAX_IMAGES)]
    return np.stack([images.decode(f, tuple(size)) for f in files])


def prepare(model, pixels) -> np.ndarray:
    """Decoded `pixels` prepared as `model` takes them (its input rule)."""
    from keras_xception.preprocessing import preprocess_input
    from keras_xception.source import rescales_itself

    batch = pixels if rescales_itself(model) else preprocess_input(pixels)
    return np.ascontiguousarray(batch, dtype=np.float32)


def _shown(given) -> str:
    if isinstance(given, np.ndarray):
        return f"an array of shape {given.shape}"
    return repr(os.fspath(given) if isinstance(given, os.PathLike) else given)


def split(batch):
    """`(calibration, held_out)`: every fourth image held out (at least one).

    Raises:
        ConfigError: With fewer than 2 images (nothing would be left to
            calibrate on, or to check).
    """
    if len(batch) < 2:
        raise ConfigError(
            "int8 needs at least 2 calibration images when no held_out images "
            "are given (a quarter is held out to check agreement). "
            f"Received: {len(batch)} image"
        )
    held = np.zeros(len(batch), bool)
    held[3::4] = True
    if not held.any():
        held[-1] = True
    return batch[~held], batch[held]


def _digest(*arrays) -> str:
    digest = hashlib.sha256()
    for array in arrays:
        digest.update(repr(array.shape).encode())
        digest.update(np.ascontiguousarray(array, np.float32).tobytes())
    return digest.hexdigest()


# --- quantizing -------------------------------------------------------------------


def _separable_layers(model):
    """The `SeparableConv2D` layers of `model`, nested models included, in order."""
    import keras

    found = []
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            found += _separable_layers(layer)
        elif isinstance(layer, keras.layers.SeparableConv2D):
            found.append(layer)
    return found


def float_depthwise(folded, ov_model) -> list[str]:
    """The OpenVINO names of the depthwise convolutions that stay float.

    The converter does not keep Keras's layer names, so the depthwise
    convolutions (`GroupConvolution`) are matched to the `SeparableConv2D`
    layers by their order in the graph, and each match is checked by its
    channels; if the two lists disagree, every depthwise convolution stays
    float (slower, never less accurate).
    """
    import re

    layers = _separable_layers(folded)
    groups = [op for op in ov_model.get_ordered_ops()
              if op.get_type_name() == "GroupConvolution"]
    pattern = re.compile(SETTINGS["float_depthwise"])
    matched = len(layers) == len(groups) and all(
        int(op.input(1).get_partial_shape()[0].get_length())
        == int(layer.get_weights()[0].shape[2])
        for layer, op in zip(layers, groups))
    if not matched:
        return [op.get_friendly_name() for op in groups]
    return [op.get_friendly_name() for layer, op in zip(layers, groups)
            if pattern.fullmatch(layer.name)]


def _quantize(ov_model, calibration, ignored):
    """NNCF's post-training quantization of `ov_model` with `SETTINGS`.

    Args:
        ov_model: The float32 `openvino.Model`.
        calibration: The calibration batch.
        ignored: OpenVINO node names left in float.
    """
    import nncf

    global quantized_count
    data = nncf.Dataset([calibration[i:i + 1] for i in range(len(calibration))])
    with _quiet_nncf():
        quantized = nncf.quantize(
            ov_model, data,
            preset=getattr(nncf.QuantizationPreset, SETTINGS["preset"]),
            subset_size=min(SETTINGS["subset_size"], len(calibration)),
            fast_bias_correction=SETTINGS["fast_bias_correction"],
            ignored_scope=nncf.IgnoredScope(names=list(ignored), validate=False),
        )
    quantized_count += 1
    return quantized


class _quiet_nncf:
    """NNCF's INFO lines off and its progress bars on stderr, for the block.

    NNCF draws its progress bars with `rich` on stdout, which the command
    line keeps for results.
    """

    def __enter__(self):
        import contextlib
        import logging
        import sys

        import nncf

        self.logger = logging.getLogger("nncf")
        self.level = self.logger.level
        nncf.set_log_level(logging.WARNING)
        self.redirect = contextlib.redirect_stdout(sys.stderr)
        self.redirect.__enter__()
        return self

    def __exit__(self, *exc):
        self.redirect.__exit__(*exc)
        self.logger.setLevel(self.level)


def float_hint() -> str:
    """OpenVINO's `INFERENCE_PRECISION_HINT` for the parts of an int8 model
    left float: `SETTINGS`' value, where `"auto"` is `"bf16"` on a CPU with
    native bf16 that oneDNN may use (`cpu.usable_flags`), else `"f32"`."""
    from keras_xception.inference import cpu

    hint = SETTINGS["inference_precision_hint"]
    if hint != "auto":
        return hint
    return "bf16" if cpu.bf16_flags(cpu.usable_flags()) else "f32"


def _compile(ov_model, hint, mode="LATENCY"):
    import openvino as ov

    return ov.Core().compile_model(ov_model, "CPU", {"INFERENCE_PRECISION_HINT": hint,
                                                     "PERFORMANCE_HINT": mode})


def _runner(compiled):
    """batch -> float32 outputs of a compiled one-output model (one request)."""
    request = compiled.create_infer_request()

    def forward(x):
        request.infer({0: np.ascontiguousarray(x, dtype=np.float32)})
        return np.array(request.get_output_tensor(0).data, dtype=np.float32)

    forward.threads = int(compiled.get_property("INFERENCE_NUM_THREADS"))
    return forward


def _streamed(ov_model, hint):
    """batch -> float32 outputs of a quantized model, as fast as it runs here.

    A batch of one runs on every core (OpenVINO's LATENCY hint: one stream).
    A larger batch is split into one part per stream of OpenVINO's
    THROUGHPUT hint (compiled on first use), the parts run at once and their
    outputs are joined in order: on the 2-core Zen 4 that is about 12% more
    images per second at batch 8 than one stream on both cores
    (docs/benchmarks.md, "int8"). Where THROUGHPUT gives one stream, the
    batch runs whole on the LATENCY model. It holds its infer requests:
    call it from one thread at a time. A part that fails raises once every
    part has ended; the next call starts afresh.
    """
    whole = _runner(_compile(ov_model, hint))
    requests = []  # One per THROUGHPUT stream, made on first use ([None]: one stream).

    def forward(x):
        x = np.ascontiguousarray(x, dtype=np.float32)
        if len(x) > 1 and not requests:
            compiled = _compile(ov_model, hint, "THROUGHPUT")
            count = int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
            requests.extend([compiled.create_infer_request() for _ in range(count)]
                            if count > 1 else [None])
        if len(x) <= 1 or requests[0] is None:
            return whole(x)
        parts = np.array_split(x, min(len(x), len(requests)))
        running, failure = [], None
        for request, part in zip(requests, parts):
            try:
                request.start_async({0: part})
                running.append(request)
            except RuntimeError as err:
                failure = err
                break
        for request in running:  # Every started part ends before anything is raised.
            try:
                request.wait()
            except RuntimeError as err:
                failure = failure or err
        if failure is not None:
            raise failure
        return np.concatenate([np.array(request.get_output_tensor(0).data, dtype=np.float32)
                               for request in running], axis=0)

    forward.threads = whole.threads
    return forward


def _img_per_s(forward, batch, repeats=2):
    forward(batch)  # warm up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        forward(batch)
        best = min(best, time.perf_counter() - start)
    return len(batch) / best


def has_classifier(model) -> bool:
    """Whether `model` ends in a classifier of at least 2 classes."""
    import keras

    from keras_xception.explain import _final_op

    op = _final_op(model)
    ends = isinstance(op, (keras.layers.Dense, keras.layers.Activation)) or type(
        op).__name__ in ("Softmax", "Sigmoid")
    return ends and int(model.outputs[0].shape[-1]) >= 2


def agreement(reference, candidate, classifier) -> dict:
    """How `candidate`'s outputs agree with `reference`'s, image by image.

    Returns:
        `min_cosine`, `mean_cosine`, and for a classifier `top1_agreement`
        (share of images whose best class is the same) and `top5_overlap`
        (mean share of the reference's top 5 in the candidate's top 5;
        top k with fewer classes), else `None` for those two.
    """
    a = np.asarray(reference, np.float64).reshape(len(reference), -1)
    b = np.asarray(candidate, np.float64).reshape(len(candidate), -1)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    cosine = (a * b).sum(1) / np.where(norms > 0, norms, 1.0)
    out = {"min_cosine": float(cosine.min()), "mean_cosine": float(cosine.mean()),
           "top1_agreement": None, "top5_overlap": None}
    if classifier:
        k = min(5, a.shape[1])
        out["top1_agreement"] = float((a.argmax(1) == b.argmax(1)).mean())
        top_a = np.argsort(-a, axis=1)[:, :k]
        top_b = np.argsort(-b, axis=1)[:, :k]
        out["top5_overlap"] = float(np.mean([len(set(x) & set(y)) / k
                                             for x, y in zip(top_a, top_b)]))
    return out


def verdict(report, thresholds) -> tuple[bool, str]:
    """Whether `report`'s agreement meets `thresholds`, and why not."""
    agreed = report["agreement"]
    failed = []
    if agreed["mean_cosine"] < thresholds["mean_cosine"]:
        failed.append(f"mean cosine {agreed['mean_cosine']:.4f} < {thresholds['mean_cosine']}")
    top1 = agreed["top1_agreement"]
    if top1 is not None and top1 < thresholds["top1_agreement"]:
        failed.append(f"top-1 agreement {top1:.3f} < {thresholds['top1_agreement']}")
    return not failed, "; ".join(failed)


def check_thresholds(thresholds) -> dict:
    """`THRESHOLDS` updated by `thresholds` (a dict, or `None`), checked."""
    merged = dict(THRESHOLDS)
    for name, value in (thresholds or {}).items():
        if name not in THRESHOLDS:
            raise ConfigError(
                f"thresholds take {', '.join(THRESHOLDS)}. Received: {name!r}"
            )
        if isinstance(value, bool) or not isinstance(value, (int, float)) or \
                not 0 <= value < float("inf"):
            raise ConfigError(
                f"the {name} threshold must be a number from 0 (above 1 "
                f"nothing passes). Received: {name}={value!r}"
            )
        merged[name] = float(value)
    return merged


# --- the cache ----------------------------------------------------------------


def cache_folder(key) -> pathlib.Path:
    """The cache entry for `key` (`$KERAS_HOME/models/xception_int8/<key>`)."""
    from keras_xception.weights import cache

    return cache.download_dir() / CACHE_FOLDER / key


def read_report(folder) -> dict | None:
    """The `report.json` of an int8 IR folder, or `None` if it is not one."""
    folder = pathlib.Path(folder)
    try:
        report = json.loads((folder / REPORT).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(report, dict) or report.get("format") != FORMAT or not all(
            (folder / name).is_file() for name in (IR_XML, IR_BIN)):
        return None
    return report


def _remove_entry(folder) -> None:
    """Removes the cache entry `folder`: renamed aside first, so no reader sees it half gone."""
    import shutil
    import tempfile

    folder = pathlib.Path(folder)
    try:
        aside = pathlib.Path(tempfile.mkdtemp(dir=folder.parent,
                                              prefix=f".{folder.name}.damaged."))
    except OSError:
        return  # A read-only cache: the new model is then not cached.
    try:
        os.replace(folder, aside / folder.name)
    except OSError:
        pass  # Another process removed (or replaced) it first.
    shutil.rmtree(aside, ignore_errors=True)


def write_folder(path, ov_model, report, *, overwrite=False) -> pathlib.Path:
    """Writes `ov_model` and `report` as an IR folder at `path`, atomically.

    Raises:
        FileExistsError: If `path` exists (and is not an empty folder).
    """
    import openvino as ov

    from keras_xception.fileio import atomic_path, remove_dead_temporaries

    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_dead_temporaries(path)
    with atomic_path(path, directory=True, overwrite=overwrite) as tmp:
        ov.save_model(ov_model, str(tmp / IR_XML), compress_to_fp16=False)
        (tmp / REPORT).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return path


# --- the whole step ---------------------------------------------------------------


def quantize_model(folded, calibration, *, held_out=None, cache=True):
    """The int8 OpenVINO model of `folded` and its agreement report.

    Args:
        folded: The folded float32 `keras.Model` (`fold_batch_norm`).
        calibration: Calibration images (see `images_for`).
        held_out: Images to measure agreement on, or `None` for every fourth
            calibration image.
        cache: Read and write the Keras cache.

    Returns:
        `(ov_model, report, folder)`: the quantized `openvino.Model`, the
        report (a dict, as in `report.json`; its `cache` says `"hit"` or
        `"written"`), and the cache folder (`None` without the cache).
    """
    from keras_xception.inference import openvino as ov_runtime
    from keras_xception.inference.guard import fingerprint

    require_int8()
    batch = images_for(folded, calibration)
    if held_out is None:
        calibration, held_out = split(batch)
    else:
        calibration, held_out = batch, images_for(folded, held_out, what="held_out")
    settings = dict(SETTINGS, inference_precision_hint=float_hint())
    identity = {
        "model": fingerprint(folded),
        "images": _digest(calibration, held_out),
        "versions": versions(),
        "settings": settings,
        "format": FORMAT,
    }
    key = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:32]
    folder = cache_folder(key) if cache else None
    if folder is not None:
        report = read_report(folder)
        if report is not None:
            import openvino as ov

            try:
                cached = ov.Core().read_model(str(folder / IR_XML))
            except RuntimeError:
                # A damaged entry (a truncated model.bin, an edited model.xml)
                # is quantized again rather than failing every later call.
                _remove_entry(folder)
            else:
                report["cache"] = "hit"
                report["path"] = str(folder)
                return cached, report, folder
    start = time.perf_counter()
    ov_model = ov_runtime.convert(folded)
    quantized = _quantize(ov_model, calibration, float_depthwise(folded, ov_model))
    calibration_s = time.perf_counter() - start
    reference = _runner(_compile(ov_model, "f32"))
    candidate = _streamed(quantized, settings["inference_precision_hint"])
    timed = held_out[:SPEED_BATCH]
    report = {
        "format": FORMAT,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "model_fingerprint": identity["model"],
        "calibration": {"images": int(len(calibration)), "held_out": int(len(held_out)),
                        "sha256": identity["images"], "seconds": round(calibration_s, 1)},
        "agreement": agreement(reference(held_out), candidate(held_out),
                               has_classifier(folded)),
        "speed": {"batch": int(len(timed)),
                  "float32_img_per_s": _img_per_s(reference, timed),
                  "int8_img_per_s": _img_per_s(candidate, timed),
                  "threads": candidate.threads},
        "settings": settings,
        "versions": identity["versions"],
    }
    report["speed"]["speedup"] = (report["speed"]["int8_img_per_s"]
                                  / report["speed"]["float32_img_per_s"])
    if folder is not None:
        try:
            write_folder(folder, quantized, report)
        except OSError as err:
            if err.errno in (errno.EEXIST, errno.ENOTEMPTY) and read_report(folder):
                pass  # Another process wrote it first: the same model.
            else:
                warnings.warn(f"the int8 model was not cached in {folder}: {err}",
                              stacklevel=3)
                folder = None
    report = dict(report, cache="written" if folder is not None else "off",
                  path=str(folder) if folder is not None else None)
    return quantized, report, folder


def run_hint(recorded) -> str:
    """The precision an int8 model's float parts run in here.

    Args:
        recorded: The hint its report was measured with (`report.json`'s
            `settings`).

    Returns:
        `recorded` where this CPU can run it, so the report speaks of what
        runs: a model measured with float32 parts runs them in float32 on
        any CPU, and one measured with bf16 parts runs them in bf16 only
        where bf16 is native (`float_hint`; else float32, the closest it can).
    """
    return "bf16" if recorded == "bf16" and float_hint() == "bf16" else "f32"


def compile_int8(ov_model, recorded):
    """A forward function (batch -> float32 outputs) for a quantized model,
    its parts left float in `run_hint(recorded)` (the function's `hint`)."""
    hint = run_hint(recorded)
    forward = _streamed(ov_model, hint)
    forward.hint = hint
    return forward


def check_request(precision, runtime, calibration) -> None:
    """Checks `optimize_for_inference`'s int8 arguments, before any work.

    Raises:
        ConfigError: (a `ValueError`) If int8 has no calibration images,
            calibration is given for another precision, the runtime is not
            OpenVINO, or NNCF or OpenVINO is missing.
    """
    if precision != "int8":
        raise ConfigError(
            "calibration images are used only with precision='int8'. "
            f"Received: precision={precision!r}"
        )
    if calibration is None:
        raise ConfigError(
            "precision='int8' needs calibration images: an array of images "
            "prepared as the model takes them, a folder or a list of image "
            "files (calibration=...). Received: calibration=None"
        )
    if runtime not in ("auto", "openvino"):
        raise ConfigError(
            "precision='int8' runs on OpenVINO (runtime='auto' or 'openvino'). "
            f"Received: runtime={runtime!r}"
        )
    require_int8()


def check_options(precision, calibration, *, batch=False) -> None:
    """The command line's `--precision int8 --calibration DIR`, checked before any work.

    Raises:
        ConfigError: If one is given without the other, the folder does not
            exist, it is a batch job (`--output`), or the extra is missing.
    """
    if precision != "int8" and calibration is None:
        return
    if precision != "int8":
        raise ConfigError(
            "--calibration is for --precision int8. "
            f"Received: --precision {precision or 'auto'}"
        )
    if calibration is None:
        raise ConfigError(
            "--precision int8 needs --calibration DIR: images to calibrate on.")
    if batch:
        raise ConfigError(
            "--precision int8 is not for a batch job; write the int8 model once "
            "with `keras-xception quantize SRC --calibration DIR --output OUT` "
            "and pass --model OUT.")
    if not os.path.exists(calibration):
        raise ConfigError(f"--calibration {os.fspath(calibration)!r} does not exist.")
    require("int8", "--precision int8")
    # Counted before the model is loaded: classify has no --held-out, so a
    # quarter of these is held out and at least 2 are needed.
    from keras_xception import images

    found = len(images.find_images([calibration]))
    if found == 0:
        raise ConfigError(f"--calibration holds no image. Received: --calibration "
                          f"{os.fspath(calibration)!r}")
    if found < 2:
        raise ConfigError(
            "--precision int8 needs at least 2 images in --calibration (a quarter "
            f"is held out to check agreement). Received: {found} image in "
            f"{os.fspath(calibration)!r}")


def attach_int8(folded, calibration, *, held_out=None, thresholds=None, insist=False):
    """`folded` with the int8 `predict` and `describe()` (or float32's, below the thresholds).

    See `optimize_for_inference`; the arguments are checked already.
    """
    from keras_xception.inference import openvino as ov_runtime
    from keras_xception.inference.guard import AccuracyWarning
    from keras_xception.inference.predictor import attach_fast_predict

    thresholds = check_thresholds(thresholds)
    quantized, report, _ = quantize_model(folded, calibration, held_out=held_out)
    passed, why = verdict(report, thresholds)
    report = dict(report, thresholds=thresholds, passed=passed)
    held = report["calibration"]["held_out"]
    if passed or insist:
        forward, precision = compile_int8(
            quantized, report["settings"]["inference_precision_hint"]), "int8"
        reason = (f"int8: requested; NNCF with calibration on "
                  f"{counted(report['calibration']['images'], 'image')}; "
                  + (f"agreement on {counted(held, 'held-out image')} meets the thresholds"
                     if passed else f"kept on request (insist=True) although {why}"))
    else:
        message = (f"int8 outputs differ from float32 on {counted(held, 'held-out image')} "
                   f"({why}); using float32 (insist=True keeps int8)")
        warnings.warn(message, AccuracyWarning, stacklevel=3)
        forward, precision = ov_runtime.compile(folded, "float32"), "float32"
        reason = f"float32: {message}"
    attach_fast_predict(folded, forward=forward)
    plan = {"runtime": ov_runtime.label(), "precision": precision,
            "requested_precision": "int8", "threads": forward.threads,
            "reason": reason, "int8": report}
    if precision == "int8":
        plan["float_parts"] = forward.hint

    def describe():
        """What `predict` runs: runtime, precision, threads, why, and the int8 report."""
        return json.loads(json.dumps(plan))

    folded.describe = describe
    return folded
