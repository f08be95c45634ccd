"""Xception on one GPU under JAX: correctness against a CPU reference, then speed.

One prepared run for a lent GPU machine (docs/gpu.md has the procedure). The
model has seeded random weights (`keras.utils.set_random_seed` and
`weights=None`), so nothing but Keras, its small dependencies and this
checkout has to travel. Two steps:

    # here, on the CPU: the float32 outputs the GPU must reproduce
    KERAS_BACKEND=jax JAX_PLATFORMS=cpu python scripts/benchmark_gpu.py \\
        --write-reference .whl/reference.npz
    # on the GPU machine
    python3 scripts/benchmark_gpu.py --reference .whl/reference.npz \\
        --json $OUT/gpu.json

The second run checks correctness (float32 within 1e-4 of the reference with
TF32 off, bf16 cosine >= 0.998 against float32), measures the chip's bf16
and float32 matmul rates, a fine-tuning step of `build_classifier` in
mixed_bfloat16, jit-compiled inference in float32 and bf16 at batch 32, 128,
256 and larger (doubling up to `--max-batch` while memory allows), and the
time of the depthwise and pointwise convolutions alone. It prints a Markdown
table and writes every number to `--json`. `--small` runs the same code at
71x71 with batch 2 on the CPU in seconds (tests/test_gpu_script.py).

Exit status: 0 when the correctness checks pass, 1 when one fails (after the
speed measurements, which are written all the same) or for an expected error
(a reference file missing, unreadable or made for other settings), with one
line on stderr.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import platform
import statistics
import sys
import time
import zipfile

os.environ.setdefault("KERAS_BACKEND", "jax")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

FLOAT32_TOLERANCE = 1e-4  # relative L2 error of the logits, per image
BF16_MIN_COSINE = 0.998  # cosine of bf16 against float32 logits, per image
TARGET_BF16_IMAGES_PER_S = 10_000  # inference at batch 256 (issue 24)
TARGET_TRAIN_IMAGES_PER_S = 2_500  # fine-tuning step (issue 24)
TRAIN_FLOPS_FACTOR = 3  # a training step: forward, and twice that backward
TRAIN_CLASSES = 100
SEED = 1234


class BenchmarkError(Exception):
    """An expected failure: printed as one line on stderr, exit status 1."""


@dataclasses.dataclass(frozen=True)
class Settings:
    """The sizes of one run; `SMALL` is the CPU test's, `FULL` the GPU's."""

    image_size: int
    reference_batch: int
    inference_batches: tuple[int, ...]  # always measured
    train_batches: tuple[int, ...]
    breakdown_batch: int
    max_batch: int  # default of --max-batch: doubling from the largest above
    matmul_size: int
    warmup: int  # calls after the first, untimed
    repeats: int  # timed calls at least ...
    min_time_s: float  # ... and at least this long in all


FULL = Settings(
    image_size=299, reference_batch=8, inference_batches=(32, 128, 256),
    train_batches=(64, 128), breakdown_batch=256, max_batch=1024, matmul_size=8192,
    warmup=2, repeats=5, min_time_s=1.0,
)
SMALL = Settings(
    image_size=71, reference_batch=2, inference_batches=(2,),
    train_batches=(2,), breakdown_batch=2, max_batch=2, matmul_size=128,
    warmup=0, repeats=1, min_time_s=0.0,
)


# ----------------------------------------------------------------- helpers


def _ready(tree):
    import jax

    return jax.block_until_ready(tree)


def _time_calls(call, settings):
    """Median seconds of `call()` (already compiled and run once), synchronised."""
    for _ in range(settings.warmup):
        _ready(call())
    times = []
    start = time.perf_counter()
    while len(times) < settings.repeats or time.perf_counter() - start < settings.min_time_s:
        t0 = time.perf_counter()
        _ready(call())
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _compile(fn, *args, precision=None):
    """AOT-compiles `fn` for `args` and runs it once.

    Returns `(compiled, first_output, compile_s, first_result_s, memory_bytes)`:
    `first_result_s` is from the start of tracing to the first output on the
    host side of a synchronisation, `memory_bytes` XLA's own estimate of the
    executable's device memory (arguments, outputs and temporaries), or None.
    """
    import jax

    t0 = time.perf_counter()
    with jax.default_matmul_precision(precision):
        compiled = jax.jit(fn).lower(*args).compile()
    compile_s = time.perf_counter() - t0
    out = _ready(compiled(*args))
    first_s = time.perf_counter() - t0
    return compiled, out, compile_s, first_s, _memory_bytes(compiled)


def _memory_bytes(compiled):
    try:
        m = compiled.memory_analysis()
    except (AttributeError, NotImplementedError):
        return None
    if m is None:
        return None
    return int(m.argument_size_in_bytes + m.output_size_in_bytes
               + m.temp_size_in_bytes - m.alias_size_in_bytes)


def _memory_stats():
    import jax

    stats = jax.devices()[0].memory_stats()
    return stats or {}


def _set_policy(dtype):
    import keras

    keras.config.set_dtype_policy("mixed_bfloat16" if dtype == "bfloat16" else "float32")


def _build_xception(dtype, image_size, seed):
    """Xception with seeded random weights, returning logits (no softmax)."""
    import keras

    from keras_xception import Xception

    _set_policy(dtype)
    keras.utils.set_random_seed(seed)
    return Xception(weights=None, input_shape=(image_size, image_size, 3),
                    classifier_activation=None)


def _state(model):
    return ([v.value for v in model.trainable_variables],
            [v.value for v in model.non_trainable_variables])


def _infer_fn(model):
    def infer(trainable, non_trainable, x):
        y, _ = model.stateless_call(trainable, non_trainable, x, training=False)
        return y
    return infer


def _fingerprint(model):
    """Sum of squares of each weight, float64: equal models, equal values."""
    import numpy as np

    return np.array([float(np.sum(np.square(np.asarray(w, np.float64))))
                     for w in model.get_weights()])


def _images(batch, size, seed):
    """Seeded uint8-valued RGB images, and their `preprocess_input` form."""
    import numpy as np

    pixels = np.random.default_rng(seed).integers(0, 256, (batch, size, size, 3),
                                                  dtype=np.uint8)
    return pixels, pixels.astype(np.float32) / np.float32(127.5) - np.float32(1)


def _rel_errors(out, ref):
    import numpy as np

    out = np.asarray(out, np.float64).reshape(len(out), -1)
    ref = np.asarray(ref, np.float64).reshape(len(ref), -1)
    return np.linalg.norm(out - ref, axis=1) / np.linalg.norm(ref, axis=1)


def _cosines(a, b):
    import numpy as np

    a = np.asarray(a, np.float64).reshape(len(a), -1)
    b = np.asarray(b, np.float64).reshape(len(b), -1)
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def _finite_max(values):
    import numpy as np

    values = np.asarray(values, np.float64)
    return float(np.max(values)) if np.all(np.isfinite(values)) else float("nan")


def _finite_min(values):
    import numpy as np

    values = np.asarray(values, np.float64)
    return float(np.min(values)) if np.all(np.isfinite(values)) else float("nan")


def _forward_gflop(image_size):
    """GFLOP of one Xception forward pass (with its classifier) at this size."""
    import keras

    from keras_xception import Xception, count_flops

    _set_policy("float32")
    model = Xception(weights=None, input_shape=(image_size, image_size, 3))
    gflop = count_flops(model).flops / 1e9
    del model
    keras.backend.clear_session()
    return gflop


# ---------------------------------------------------------------- reference

REFERENCE_KEYS = ("pixels", "logits", "weights_fingerprint", "image_size", "seed")


def write_reference(path, settings, seed):
    """Computes the float32 logits on this machine and writes them to `path`."""
    import jax
    import keras
    import numpy as np

    model = _build_xception("float32", settings.image_size, seed)
    pixels, x = _images(settings.reference_batch, settings.image_size, seed)
    with jax.default_matmul_precision("highest"):
        logits = np.asarray(jax.jit(_infer_fn(model))(*_state(model), x), np.float32)
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        path, pixels=pixels, logits=logits, weights_fingerprint=_fingerprint(model),
        image_size=np.int64(settings.image_size), seed=np.int64(seed),
        platform=np.str_(jax.devices()[0].platform), keras=np.str_(keras.__version__),
        jax=np.str_(jax.__version__),
    )
    print(f"Wrote {path}: float32 logits {logits.shape} of {len(pixels)} seeded "
          f"{settings.image_size}x{settings.image_size} images on "
          f"{jax.devices()[0].platform} (keras {keras.__version__}, jax {jax.__version__}).")


def read_reference(path, settings, seed):
    """Loads and checks a reference file before any model is built.

    Raises:
        BenchmarkError: If the file is missing, unreadable, lacks an array or
            was made for another image size, batch or seed.
    """
    import numpy as np

    path = pathlib.Path(path)
    if not path.is_file():
        raise BenchmarkError(
            f"reference file not found: {path} (write it on the CPU with "
            "--write-reference, with the same --small setting)")
    try:
        with np.load(path, allow_pickle=False) as data:
            ref = {key: data[key] for key in data.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as err:
        raise BenchmarkError(f"cannot read reference file {path}: {err}") from None
    missing = [key for key in REFERENCE_KEYS if key not in ref]
    if missing:
        raise BenchmarkError(f"reference file {path} lacks {', '.join(missing)}")
    size, batch = settings.image_size, settings.reference_batch
    expected = {"pixels": (batch, size, size, 3), "logits": (batch, 1000)}
    for key, shape in expected.items():
        if tuple(ref[key].shape) != shape:
            raise BenchmarkError(
                f"reference file {path} has {key} of shape {tuple(ref[key].shape)}, "
                f"this run expects {shape} (was it written with the same --small "
                "setting?)")
    if int(ref["image_size"]) != size or int(ref["seed"]) != seed:
        raise BenchmarkError(
            f"reference file {path} was written for image size {int(ref['image_size'])} "
            f"and seed {int(ref['seed'])}; this run uses {size} and {seed}")
    return ref


def check_correctness(ref, settings, seed):
    """float32 against the reference (TF32 off) and bf16 against float32."""
    import jax
    import keras
    import numpy as np

    x = ref["pixels"].astype(np.float32) / np.float32(127.5) - np.float32(1)
    outputs, fingerprints = {}, {}
    for dtype in ("float32", "bfloat16"):
        model = _build_xception(dtype, settings.image_size, seed)
        fingerprints[dtype] = _fingerprint(model)
        precision = "highest" if dtype == "float32" else None
        with jax.default_matmul_precision(precision):
            y = jax.jit(_infer_fn(model))(*_state(model), jax.device_put(x))
        outputs[dtype] = np.asarray(y, np.float32)
        del model
        keras.backend.clear_session()

    reference_fp = ref["weights_fingerprint"]
    if reference_fp.shape != fingerprints["float32"].shape or not np.allclose(
            fingerprints["float32"], reference_fp, rtol=1e-5, atol=0):
        raise BenchmarkError(
            "the seeded weights differ from the reference's (another Keras or JAX "
            f"random-number stream? reference: keras {ref.get('keras', '?')}, "
            f"jax {ref.get('jax', '?')}; here: keras {keras.__version__}, "
            f"jax {jax.__version__})")
    rel = _rel_errors(outputs["float32"], ref["logits"])
    cos = _cosines(outputs["bfloat16"], outputs["float32"])
    f32_max = _finite_max(rel)
    bf16_min = _finite_min(cos)
    return {
        "float32": {
            "max_rel_error": f32_max,
            "rel_errors": [float(v) for v in rel],
            "tolerance": FLOAT32_TOLERANCE,
            "matmul_precision": "highest (jax.default_matmul_precision; TF32 off)",
            "passed": bool(f32_max <= FLOAT32_TOLERANCE),
        },
        "bfloat16": {
            "min_cosine": bf16_min,
            "cosines": [float(v) for v in cos],
            "threshold": BF16_MIN_COSINE,
            "policy": "mixed_bfloat16",
            "passed": bool(bf16_min >= BF16_MIN_COSINE),
        },
        "reference": {
            "batch": int(len(ref["pixels"])),
            "image_size": int(ref["image_size"]),
            "platform": str(ref.get("platform", "?")),
            "keras": str(ref.get("keras", "?")),
            "jax": str(ref.get("jax", "?")),
        },
    }


# -------------------------------------------------------------------- speed


def matmul_rates(settings):
    """TFLOP/s of a square jitted matmul: bf16, and float32 with TF32 off."""
    import jax

    n = settings.matmul_size
    ka, kb = jax.random.split(jax.random.key(SEED))
    rates = {}
    for dtype, precision in (("bfloat16", None), ("float32", "highest")):
        a = jax.random.normal(ka, (n, n), dtype)
        b = jax.random.normal(kb, (n, n), dtype)
        compiled, *_ = _compile(lambda a, b: a @ b, a, b, precision=precision)
        seconds = _time_calls(lambda: compiled(a, b), settings)
        rates[dtype] = 2 * n**3 / seconds / 1e12
        del a, b
    return {"size": n, "bfloat16_tflops": rates["bfloat16"],
            "float32_highest_tflops": rates["float32"]}


def _fraction(tflops, peak):
    return tflops / peak if peak else None


def inference(settings, gflop, bf16_peak, max_batch, deadline, seed):
    """images/s of jitted inference, float32 and bf16, per batch size.

    The batches in `settings.inference_batches` always run; after them the
    batch doubles up to `max_batch` while XLA's estimate of the memory fits
    what the device has free and the time budget lasts.
    """
    import jax
    import keras

    rows, stopped = [], {}
    for dtype in ("float32", "bfloat16"):
        model = _build_xception(dtype, settings.image_size, seed)
        state = _state(model)
        precision = "highest" if dtype == "float32" else None
        batches = [b for b in settings.inference_batches if b <= max_batch]
        batch = max(settings.inference_batches) * 2
        while batch <= max_batch:
            batches.append(batch)
            batch *= 2
        for batch in batches:
            optional = batch > max(settings.inference_batches)
            if optional and time.monotonic() > deadline:
                stopped[dtype] = f"batch {batch} and up skipped: time budget spent"
                break
            keys = jax.random.split(jax.random.key(seed + batch), 2)
            shape = (batch, settings.image_size, settings.image_size, 3)
            xs = [jax.random.uniform(k, shape, "float32", -1.0, 1.0) for k in keys]
            compiled, _, compile_s, first_s, need = _compile(
                _infer_fn(model), *state, xs[0], precision=precision)
            calls = iter(range(1 << 62))
            seconds = _time_calls(lambda: compiled(*state, xs[next(calls) % 2]), settings)
            images_per_s = batch / seconds
            tflops = images_per_s * gflop / 1e3
            rows.append({
                "dtype": dtype, "batch": batch, "images_per_s": images_per_s,
                "ms_per_batch": seconds * 1e3, "compile_s": compile_s,
                "first_result_s": first_s, "tflops": tflops,
                "fraction_of_bf16_matmul": _fraction(tflops, bf16_peak),
                "compiled_memory_bytes": need,
                "peak_memory_bytes": _memory_stats().get("peak_bytes_in_use"),
            })
            del compiled, xs
            free = _free_bytes()
            if batch < batches[-1] and need and free is not None and 2 * need > free:
                # The next batch needs about twice this: stop before it fails.
                stopped[dtype] = (f"batch {2 * batch} and up skipped: about "
                                  f"{2 * need / 2**30:.1f} GiB needed, "
                                  f"{free / 2**30:.1f} GiB free")
                break
        del model, state
        keras.backend.clear_session()
    return rows, stopped


def _free_bytes():
    stats = _memory_stats()
    if "bytes_limit" not in stats:
        return None
    return stats["bytes_limit"] - stats.get("bytes_in_use", 0)


def training(settings, gflop, bf16_peak, seed):
    """A fine-tuning step of `build_classifier` (base trainable), mixed_bfloat16."""
    import jax
    import jax.numpy as jnp
    import keras

    from keras_xception.training.classifier import (
        FINE_TUNE_LEARNING_RATE, build_classifier, unfreeze)

    _set_policy("bfloat16")
    keras.utils.set_random_seed(seed)
    model = build_classifier(TRAIN_CLASSES, image_size=settings.image_size, weights=None)
    unfreeze(model, "block1")  # every block; BatchNormalization stays frozen
    optimizer = keras.optimizers.Adam(FINE_TUNE_LEARNING_RATE)
    optimizer.build(model.trainable_variables)
    loss_object = keras.losses.SparseCategoricalCrossentropy()

    def loss_fn(trainable, non_trainable, x, y):
        pred, non_trainable = model.stateless_call(trainable, non_trainable, x,
                                                   training=True)
        return loss_object(y, pred), non_trainable

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def step(trainable, non_trainable, opt_vars, x, y):
        (loss, non_trainable), grads = grad_fn(trainable, non_trainable, x, y)
        trainable, opt_vars = optimizer.stateless_apply(opt_vars, grads, trainable)
        return trainable, non_trainable, opt_vars, loss

    state = (*_state(model), [v.value for v in optimizer.variables])
    rows = []
    for batch in settings.train_batches:
        kx, ky = jax.random.split(jax.random.key(seed + batch))
        shape = (batch, settings.image_size, settings.image_size, 3)
        x = jax.random.uniform(kx, shape, "float32", 0.0, 255.0)
        y = jax.random.randint(ky, (batch,), 0, TRAIN_CLASSES, jnp.int32)
        compiled, out, compile_s, first_s, need = _compile(step, *state, x, y)
        state = out[:3]
        losses = []

        def call():
            nonlocal state
            *new_state, loss = compiled(*state, x, y)
            state = tuple(new_state)
            losses.append(loss)
            return loss

        seconds = _time_calls(call, settings)
        images_per_s = batch / seconds
        tflops = images_per_s * gflop * TRAIN_FLOPS_FACTOR / 1e3
        rows.append({
            "batch": batch, "dtype": "mixed_bfloat16", "images_per_s": images_per_s,
            "ms_per_step": seconds * 1e3, "compile_s": compile_s,
            "first_result_s": first_s, "tflops": tflops,
            "fraction_of_bf16_matmul": _fraction(tflops, bf16_peak),
            "compiled_memory_bytes": need,
            "peak_memory_bytes": _memory_stats().get("peak_bytes_in_use"),
            "last_loss": float(losses[-1]),
            "trainable_weights": len(model.trainable_variables),
        })
        del compiled, x, y
    del model, state
    keras.backend.clear_session()
    return rows


def breakdown(settings, seed):
    """Where bf16 inference time goes: the model's convolutions alone, by kind.

    For each kind (the depthwise and the pointwise halves of every
    `SeparableConv2D`, the 3x3 `Conv2D`s of block1, the 1x1 residual
    `Conv2D`s) one jitted function runs every convolution of that kind with
    the model's own bf16 kernels on random bf16 inputs of the shape each sees
    at `settings.breakdown_batch`: a model of only those convolutions. What is
    left of the whole model's time is BatchNormalization, ReLU, pooling, the
    residual additions, and what fusing them into the convolutions gains or
    loses (negative when the convolutions alone take longer).
    """
    import jax
    import keras
    from keras import layers, ops

    batch = settings.breakdown_batch
    model = _build_xception("bfloat16", settings.image_size, seed)
    state = _state(model)
    x = jax.random.uniform(jax.random.key(seed), (batch, settings.image_size,
                           settings.image_size, 3), "float32", -1.0, 1.0)
    compiled, *_ = _compile(_infer_fn(model), *state, x)
    full_s = _time_calls(lambda: compiled(*state, x), settings)
    del compiled, x

    kinds = {}  # kind -> list of (input shape, kernel, strides, padding, flops, bytes)
    for layer in model.layers:
        if not isinstance(layer, (layers.SeparableConv2D, layers.Conv2D)):
            continue
        shape = (batch, *layer.input.shape[1:])
        out = (batch, *layer.output.shape[1:])
        if isinstance(layer, layers.SeparableConv2D):
            dk = layer.depthwise_kernel.value.astype("bfloat16")
            pk = layer.pointwise_kernel.value.astype("bfloat16")
            mid = (*out[:3], shape[3] * dk.shape[3])
            kinds.setdefault("depthwise", []).append(
                (shape, dk, layer.strides, layer.padding,
                 2 * _prod(mid) * dk.shape[0] * dk.shape[1], 2 * (_prod(shape) + _prod(mid))))
            kinds.setdefault("pointwise", []).append(
                (mid, pk, 1, "valid", 2 * _prod(out) * mid[3], 2 * (_prod(mid) + _prod(out))))
        else:
            k = layer.kernel.value.astype("bfloat16")
            kind = "conv 1x1 (residual)" if k.shape[:2] == (1, 1) else "conv 3x3 (block1)"
            kinds.setdefault(kind, []).append(
                (shape, k, layer.strides, layer.padding,
                 2 * _prod(out) * k.shape[0] * k.shape[1] * k.shape[2],
                 2 * (_prod(shape) + _prod(out))))

    rows, convs_s = [], 0.0
    for kind, convs in kinds.items():
        inputs = {}  # one random input per shape, shared by the layers of that shape
        for shape, *_ in convs:
            if shape not in inputs:
                key = jax.random.key(seed + len(inputs))
                inputs[shape] = jax.random.uniform(key, shape, "float32", -1.0,
                                                   1.0).astype("bfloat16")
        depthwise = kind == "depthwise"
        settings_of = [(strides, padding) for _, _, strides, padding, _, _ in convs]

        def only_these(xs, kernels, depthwise=depthwise, settings_of=settings_of):
            conv = ops.depthwise_conv if depthwise else ops.conv
            return [conv(a, k, strides=st, padding=pad)
                    for a, k, (st, pad) in zip(xs, kernels, settings_of)]

        xs = [inputs[c[0]] for c in convs]
        kernels = [c[1] for c in convs]
        compiled, *_ = _compile(only_these, xs, kernels)
        seconds = _time_calls(lambda: compiled(xs, kernels), settings)
        convs_s += seconds
        flops = sum(c[4] for c in convs)
        nbytes = sum(c[5] for c in convs)
        rows.append({"part": kind, "layers": len(convs), "ms": seconds * 1e3,
                     "share": seconds / full_s, "tflops": flops / seconds / 1e12,
                     "gbytes_per_s": nbytes / seconds / 1e9})
        del compiled, inputs, xs
    rows.append({"part": "rest (BN, ReLU, pooling, adds, fusion)", "layers": None,
                 "ms": (full_s - convs_s) * 1e3, "share": (full_s - convs_s) / full_s,
                 "tflops": None, "gbytes_per_s": None})
    del model, state
    keras.backend.clear_session()
    return {"batch": batch, "dtype": "mixed_bfloat16", "full_model_ms": full_s * 1e3,
            "rows": rows}


def _prod(shape):
    out = 1
    for d in shape:
        out *= int(d)
    return out


# ------------------------------------------------------------------- report


def _num(value, fmt):
    return "n/a" if value is None else format(value, fmt)


def _gib(value):
    return "n/a" if value is None else f"{value / 2**30:.2f}"


def format_report(r):
    c = r["correctness"]
    lines = [
        f"## Xception on {r['device']} (JAX {r['versions']['jax']}, Keras "
        f"{r['versions']['keras']}, keras_xception {r['versions']['keras_xception']}), "
        f"{r['settings']['image_size']}x{r['settings']['image_size']}"
        + ("" if r["gflop_per_image"] is None
           else f", {r['gflop_per_image']:.2f} GFLOP per image forward"),
        "",
        "| check | value | target | result |",
        "| --- | --- | --- | --- |",
        f"| float32 vs CPU reference, max relative L2 error (TF32 off) | "
        f"{c['float32']['max_rel_error']:.2e} | <= {FLOAT32_TOLERANCE:g} | "
        f"{'pass' if c['float32']['passed'] else 'FAIL'} |",
        f"| mixed_bfloat16 vs float32, min cosine | {c['bfloat16']['min_cosine']:.5f} | "
        f">= {BF16_MIN_COSINE} | {'pass' if c['bfloat16']['passed'] else 'FAIL'} |",
    ]
    for name, t in r["targets"].items():
        lines.append(f"| {t['what']} | {_num(t['value'], ',.0f')} | >= {t['target']:,} | "
                     f"{'n/a' if t['met'] is None else 'met' if t['met'] else 'not met'} |")
    m = r["matmul"]
    if m is None:
        lines += ["", f"Correctness checks only; elapsed {r['elapsed_s']:.0f} s."]
        return "\n".join(lines)
    lines += ["", f"Matmul {m['size']}x{m['size']}: bf16 {m['bfloat16_tflops']:.1f} TFLOP/s, "
              f"float32 (highest) {m['float32_highest_tflops']:.1f} TFLOP/s.", "",
              "| inference | batch | images/s | ms/batch | first result s | TFLOP/s "
              "| of bf16 matmul | XLA memory GiB | peak GiB |",
              "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for row in r["inference"]:
        lines.append(
            f"| {row['dtype']} | {row['batch']} | {row['images_per_s']:,.0f} | "
            f"{row['ms_per_batch']:.2f} | {row['first_result_s']:.1f} | {row['tflops']:.1f} | "
            f"{_num(row['fraction_of_bf16_matmul'], '.1%')} | "
            f"{_gib(row['compiled_memory_bytes'])} | {_gib(row['peak_memory_bytes'])} |")
    for dtype, why in r["inference_stopped"].items():
        lines.append(f"\n{dtype}: {why}.")
    lines += ["", "| fine-tuning step | batch | images/s | ms/step | first result s | TFLOP/s "
              "| of bf16 matmul | XLA memory GiB | peak GiB |",
              "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for row in r["training"]:
        lines.append(
            f"| {row['dtype']} | {row['batch']} | {row['images_per_s']:,.0f} | "
            f"{row['ms_per_step']:.2f} | {row['first_result_s']:.1f} | {row['tflops']:.1f} | "
            f"{_num(row['fraction_of_bf16_matmul'], '.1%')} | "
            f"{_gib(row['compiled_memory_bytes'])} | {_gib(row['peak_memory_bytes'])} |")
    b = r["breakdown"]
    if "skipped" in b:
        lines += ["", f"Breakdown: {b['skipped']}."]
    else:
        lines += ["", f"Where bf16 inference time goes at batch {b['batch']} (whole model "
                  f"{b['full_model_ms']:.2f} ms; each convolution jitted alone):", "",
                  "| part | layers | ms | share | TFLOP/s | GB/s |",
                  "| --- | ---: | ---: | ---: | ---: | ---: |"]
        for row in b["rows"]:
            lines.append(f"| {row['part']} | {_num(row['layers'], 'd')} | {row['ms']:.2f} | "
                         f"{row['share']:.0%} | {_num(row['tflops'], '.1f')} | "
                         f"{_num(row['gbytes_per_s'], ',.0f')} |")
    lines += ["", f"Elapsed {r['elapsed_s']:.0f} s."]
    return "\n".join(lines)


def _targets(inference_rows, training_rows):
    bf16_256 = next((row["images_per_s"] for row in inference_rows
                     if row["dtype"] == "bfloat16" and row["batch"] == 256), None)
    train_best = max((row["images_per_s"] for row in training_rows), default=None)
    return {
        "bf16_inference_batch_256": {
            "what": "bf16 inference images/s at batch 256", "target": TARGET_BF16_IMAGES_PER_S,
            "value": bf16_256,
            "met": None if bf16_256 is None else bf16_256 >= TARGET_BF16_IMAGES_PER_S},
        "fine_tuning_step": {
            "what": "fine-tuning step images/s (best batch)",
            "target": TARGET_TRAIN_IMAGES_PER_S, "value": train_best,
            "met": None if train_best is None else train_best >= TARGET_TRAIN_IMAGES_PER_S},
    }


def run(reference_path, settings, max_batch, budget_s, seed, check_only=False):
    """Checks correctness against the reference, then measures (unless `check_only`)."""
    import jax

    start = time.monotonic()
    deadline = start + budget_s
    ref = read_reference(reference_path, settings, seed)
    device = jax.devices()[0]
    stages = {}

    def stage(name, fn, *args):
        t0 = time.monotonic()
        out = fn(*args)
        stages[name] = time.monotonic() - t0
        return out

    correctness = stage("correctness", check_correctness, ref, settings, seed)
    if check_only:
        return _report(device, settings, max_batch, budget_s, seed, correctness,
                       stages=stages, start=start)
    gflop = stage("flop_count", _forward_gflop, settings.image_size)
    matmul = stage("matmul", matmul_rates, settings)
    peak = matmul["bfloat16_tflops"]
    # Training first, so that its peak memory is its own.
    train_rows = stage("training", training, settings, gflop, peak, seed)
    infer_rows, stopped = stage("inference", inference, settings, gflop, peak,
                                max_batch, deadline, seed)
    if time.monotonic() > deadline:
        parts = {"skipped": "time budget spent"}
    else:
        parts = stage("breakdown", breakdown, settings, seed)
    return _report(device, settings, max_batch, budget_s, seed, correctness,
                   gflop=gflop, matmul=matmul, inference=infer_rows,
                   inference_stopped=stopped, training=train_rows, breakdown=parts,
                   stages=stages, start=start)


def _report(device, settings, max_batch, budget_s, seed, correctness, *, stages,
            start, gflop=None, matmul=None, inference=None, inference_stopped=None,
            training=None, breakdown=None):
    import jax
    import keras

    import keras_xception

    passed = correctness["float32"]["passed"] and correctness["bfloat16"]["passed"]
    return {
        "device": getattr(device, "device_kind", str(device)),
        "platform": device.platform,
        "versions": {"jax": jax.__version__, "jaxlib": _jaxlib_version(),
                     "keras": keras.__version__,
                     "keras_xception": keras_xception.__version__,
                     "python": platform.python_version()},
        "settings": {**dataclasses.asdict(settings), "max_batch": max_batch,
                     "budget_s": budget_s, "seed": seed,
                     "small": settings is SMALL, "train_classes": TRAIN_CLASSES,
                     "train_unfrozen_from": "block1",
                     "float32_matmul_precision": "highest",
                     "bf16_policy": "mixed_bfloat16"},
        "gflop_per_image": gflop,
        "train_gflop_per_image": None if gflop is None else gflop * TRAIN_FLOPS_FACTOR,
        "correctness": correctness,
        "matmul": matmul,
        "inference": inference,
        "inference_stopped": inference_stopped,
        "training": training,
        "breakdown": breakdown,
        "targets": _targets(inference or [], training or []),
        "passed": passed,
        "stage_seconds": stages,
        "elapsed_s": time.monotonic() - start,
    }


def _jaxlib_version():
    try:
        import jaxlib

        return jaxlib.__version__
    except (ImportError, AttributeError):
        return None


def _positive(text):
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer. Received: {text!r}")
    return value


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--write-reference", metavar="NPZ",
                      help="compute the float32 logits here and write them (CPU step)")
    mode.add_argument("--reference", metavar="NPZ",
                      help="check against this reference, then measure (GPU step)")
    parser.add_argument("--small", action="store_true",
                        help="71x71 images, batch 2: the CPU test's sizes")
    parser.add_argument("--json", metavar="PATH", help="write every number here")
    parser.add_argument("--max-batch", type=_positive, default=None,
                        help="largest inference batch; doubling from 256 stops here "
                             "(default 1024, with --small 2)")
    parser.add_argument("--budget-s", type=float, default=300.0,
                        help="past this many seconds, skip the optional parts "
                             "(batches above 256, the breakdown); default 300")
    parser.add_argument("--check-only", action="store_true",
                        help="with --reference: the correctness checks alone")
    parser.add_argument("--seed", type=int, default=SEED)
    args = parser.parse_args(argv)
    if args.check_only and not args.reference:
        parser.error("--check-only goes with --reference")
    return args


def main(argv=None):
    args = parse_args(argv)
    settings = SMALL if args.small else FULL
    max_batch = args.max_batch or settings.max_batch
    try:
        if os.environ["KERAS_BACKEND"] != "jax":
            raise BenchmarkError("this script needs KERAS_BACKEND=jax. Received: "
                                 f"KERAS_BACKEND={os.environ['KERAS_BACKEND']!r}")
        from keras_xception import tfenv

        tfenv.install()  # Keras starts as in the command line: quicker.
        if args.write_reference:
            write_reference(args.write_reference, settings, args.seed)
            return 0
        report = run(args.reference, settings, max_batch, args.budget_s, args.seed,
                     check_only=args.check_only)
    except BenchmarkError as err:
        print(f"benchmark_gpu.py: error: {err}", file=sys.stderr)
        return 1
    print(format_report(report), flush=True)
    if args.json:
        path = pathlib.Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report, indent=2) + "\n")
    if not report["passed"]:
        c = report["correctness"]
        print(f"benchmark_gpu.py: error: correctness check failed: float32 max relative "
              f"error {c['float32']['max_rel_error']:.2e} (<= {FLOAT32_TOLERANCE:g} "
              f"wanted), bf16 min cosine {c['bfloat16']['min_cosine']:.5f} "
              f"(>= {BF16_MIN_COSINE} wanted)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
