"""Benchmark: `optimize_for_inference` against `keras.applications.Xception`.

Used by `scripts/benchmark.py` and `keras-xception benchmark`.

What runs. Each contestant lives in its own worker process (`python -m
keras_xception.benchmark --worker ...`), loaded and warmed up once; the parent
then asks the workers in turn for one measurement round, so the contestants
alternate and share the machine's noise:

- `reference`: `keras.applications.Xception(...).predict(x)`, Keras's
  default settings (`batch_size` left to Keras), in the same runtime as the
  candidate (same `TF_ENABLE_ONEDNN_OPTS`);
- `reference-default` (TensorFlow only, when `TF_ENABLE_ONEDNN_OPTS` is set
  for the candidate): the same model in a process with the variable unset,
  which is what a user of plain Keras gets; ratios against it are end to end
  (package + runtime choice). On CPUs where TensorFlow turns oneDNN on by
  itself this is the same runtime as `reference`;
- `reference-compiled`: the same Keras model's forward pass compiled by
  `keras_xception.inference.compile_forward` (a `tf.function` or `jax.jit`)
  and called directly, in the candidate's runtime: no `predict` overhead and
  no folding, so `fast` against it is what folding BatchNorm adds;
- `fast`: `optimize_for_inference(keras_xception.Xception(...))`
  with its `predict` (`precision="auto"`); `fast-float32` and
  `fast-bfloat16` the same with TensorFlow's kernels in that precision, and
  `fast-openvino-float32`, `fast-openvino-bfloat16`, `fast-onnxruntime` the
  same through those runtimes, and `fast-int8` in int8 (NNCF on OpenVINO,
  calibrated on random images; its calibration counts in `prepare_s`)
  (these four only when named in `only`);
- `onnxruntime` and `openvino`, when installed: the unfolded model exported
  to that runtime and run with its default settings, as a user who picked
  that runtime would.

By default the references are `reference-default` only (`compare`), with
`fast`, `fast-float32`, `fast-bfloat16` and the installed peers; `only`
names another set. A contestant is skipped, with a message, when the machine
has less memory available than it needs to start (`WORKER_GIB`).

Every model is Xception without its top, with global average pooling (2048
features), at 299x299 (`image_size`; a smaller side, down to Xception's
smallest, 71, makes a quick check of the machinery rather than a
measurement of the model users run). Random weights are used unless
`weights` names a no-top weights file (the speed does not depend on the
values), so the benchmark needs no download. Separate processes also make each contestant's
peak memory (peak resident set size, or peak device memory on an
accelerator) its own.

Each round measures, per worker: one `predict` call on a batch of
`batch_size` images (throughput), the best of three `predict` calls on one
image (latency), and the fp32 (or policy compute dtype) matmul rate of a
square `sgemm_size` matrix product in the same runtime. Reported values are
medians over rounds. Roofline share is `img/s x model GFLOP / matmul GFLOP/s`:
the fraction of the machine's dense matmul rate that the model sustains.
Each worker also reports whether TensorFlow's oneDNN kernels are on in its
process (`keras_xception.inference.onednn_enabled`), which the table shows as
`on` or `off` (`n/a` under other backends).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

from keras_xception import architecture
from keras_xception.inference import cpu

DTYPE_POLICIES = {"none": None, "bf16": "mixed_bfloat16", "fp16": "mixed_float16"}


# ---------------------------------------------------------------- worker side


def _matmul_rate(size, dtype, repeats=3):
    """GFLOP/s of a `size` x `size` matmul under the current backend."""
    import keras
    import numpy as np

    backend = keras.backend.backend()
    a = np.random.default_rng(0).standard_normal((size, size)).astype("float32")
    if backend == "tensorflow":
        import tensorflow as tf

        x = tf.cast(tf.constant(a), dtype)
        fn = tf.function(lambda m: tf.matmul(m, m))
        run = lambda: fn(x).numpy()  # noqa: E731
    elif backend == "jax":
        import jax
        import jax.numpy as jnp

        x = jnp.asarray(a, dtype=dtype)
        fn = jax.jit(lambda m: m @ m)
        run = lambda: fn(x).block_until_ready()  # noqa: E731
    elif backend == "torch":
        import torch

        x = keras.ops.convert_to_tensor(a, dtype=dtype)
        sync = torch.cuda.synchronize if x.is_cuda else (lambda: None)
        run = lambda: (torch.matmul(x, x), sync())  # noqa: E731
    else:
        x = a.astype(dtype)
        run = lambda: x @ x  # noqa: E731
    run()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9


def _peak_memory_bytes():
    """Peak accelerator memory if there is one, else the peak RSS."""
    import keras

    backend = keras.backend.backend()
    try:
        if backend == "jax":
            import jax

            device = jax.devices()[0]
            if device.platform != "cpu":
                return device.memory_stats()["peak_bytes_in_use"], "device"
        elif backend == "tensorflow":
            import tensorflow as tf

            if tf.config.list_logical_devices("GPU"):
                return tf.config.experimental.get_memory_info("GPU:0")["peak"], "device"
        elif backend == "torch":
            import torch

            if torch.cuda.is_available():
                return torch.cuda.max_memory_allocated(), "device"
    except Exception:  # noqa: BLE001 - memory stats are best effort
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "rss"


# Contestant -> (runtime, precision) of `optimize_for_inference`.
FAST = {
    "fast": ("auto", "auto"),
    "fast-float32": ("keras", "float32"),
    "fast-bfloat16": ("keras", "bfloat16"),
}
# The same through another runtime: only when named in `only`.
FAST_RUNTIMES = {
    "fast-openvino-float32": ("openvino", "float32"),
    "fast-openvino-bfloat16": ("openvino", "bfloat16"),
    "fast-onnxruntime": ("onnxruntime", "float32"),
    # int8 (NNCF on OpenVINO), calibrated on the worker's batch; its
    # calibration is part of `prepare_s`.
    "fast-int8": ("openvino", "int8"),
}
ALL_FAST = {**FAST, **FAST_RUNTIMES}

# Memory a worker needs to start (GiB): about 3-3.5 GiB was measured per
# worker, and ONNX Runtime's conversion peaked near 8 GiB. A worker is not
# started with less available, so that a machine is never driven out of
# memory by the benchmark.
WORKER_GIB = 4
CONVERSION_GIB = 8
# Peers: other runtimes at their default settings, when installed.
PEERS = ("onnxruntime", "openvino")
CONTESTANTS = ("reference-default", "reference", "reference-compiled", *ALL_FAST,
               *PEERS)


def _build(contestant, model):
    """The predict function a contestant is timed with, and what it runs."""
    import keras
    import numpy as np

    from keras_xception.inference import compile_forward, optimize_for_inference
    from keras_xception.inference import openvino as ov_runtime

    if contestant in ALL_FAST:
        runtime, precision = ALL_FAST[contestant]
        if precision == "int8":
            import tempfile

            # Random weights and images: agreement does not matter here, and
            # the quantized model goes to a throw-away cache, removed once
            # the model is compiled (it runs from memory).
            size = int(model.inputs[0].shape[1])
            calibration = np.random.default_rng(1).uniform(-1, 1, (8, size, size, 3))
            home = os.environ.get("KERAS_HOME")
            with tempfile.TemporaryDirectory(prefix="benchmark-int8-") as scratch:
                os.environ["KERAS_HOME"] = scratch
                try:
                    fast = optimize_for_inference(model, precision, runtime=runtime,
                                                  calibration=calibration.astype("float32"),
                                                  insist=True)
                finally:
                    if home is None:
                        del os.environ["KERAS_HOME"]
                    else:
                        os.environ["KERAS_HOME"] = home
        else:
            fast = optimize_for_inference(model, precision, runtime=runtime)
        plan = fast.describe()
        return fast.predict, {"runtime": plan["runtime"], "precision": plan["precision"]}
    if contestant == "onnxruntime":
        from keras_xception.inference import onnxruntime as ort_runtime

        forward = ort_runtime.compile(model, "float32")
        return (lambda x, **kwargs: forward(x)), {
            "runtime": ort_runtime.label(), "precision": "float32"}
    if contestant == "openvino":
        import openvino as ov

        # OpenVINO's own defaults, on the unfolded model.
        compiled = ov.Core().compile_model(ov_runtime.convert(model), "CPU")
        request = compiled.create_infer_request()

        def predict(x, **kwargs):
            request.infer({0: x})
            return np.array(request.get_output_tensor(0).data, dtype=np.float32)

        hint = compiled.get_property("INFERENCE_PRECISION_HINT")
        hint = {"bf16": "bfloat16", "f32": "float32", "f16": "float16"}.get(
            hint.get_type_name(), hint.get_type_name())
        return predict, {"runtime": ov_runtime.label(), "precision": hint}
    info = {"runtime": f"keras/{keras.backend.backend()}", "precision": "float32"}
    if contestant == "reference-compiled":
        forward = compile_forward(model)
        return (lambda x, **kwargs: forward(x)), info
    return model.predict, info


def _worker(config):
    """Serves measurement rounds for one contestant over stdin/stdout."""
    from keras_xception import tfenv

    # TensorFlow's start-up lines, filtered as the command line does.
    tfenv.install()
    import keras
    import numpy as np

    from keras_xception.inference import onednn_enabled

    policy = DTYPE_POLICIES[config["mixed_precision"]]
    if policy:
        keras.config.set_dtype_policy(policy)
    compute_dtype = keras.config.dtype_policy().compute_dtype
    from keras_xception.flops import count_flops
    from keras_xception.inference.guard import min_cosine
    from keras_xception.model import Xception

    # The same weights in every worker, so outputs can be compared: random
    # ones (the speed does not depend on the values), or a no-top weights
    # file, which makes the minimum cosine a statement about real features.
    keras.utils.set_random_seed(0)
    size = config["image_size"]
    weights = config.get("weights")
    build = (keras.applications.Xception
             if config["contestant"] in ("reference", "reference-compiled",
                                         "reference-default")
             else Xception)
    model = build(weights=weights, include_top=False, pooling="avg",
                  input_shape=(size, size, 3))
    rng = np.random.default_rng(0)
    batch = rng.uniform(-1, 1, (config["batch_size"], size, size, 3)).astype("float32")
    single = batch[:1]
    # Float32 outputs of the model before any runtime touches it.
    expected = keras.ops.convert_to_numpy(model(batch, training=False))
    prepare_start = time.perf_counter()
    predict, info = _build(config["contestant"], model)
    kwargs = {"verbose": 0}
    for _ in range(2):  # trace and warm up both shapes
        got = predict(batch, **kwargs)
        predict(single, **kwargs)
    # Building the runtime (folding, tracing, conversion) and the first calls:
    # what a short job, such as classify on one photo, pays before results.
    info["prepare_s"] = time.perf_counter() - prepare_start
    info["min_cosine"] = min_cosine(expected, got)
    _matmul_rate(config["sgemm_size"], compute_dtype, repeats=1)
    bf16_gemm = None
    # Under an AVX2 cap of oneDNN's kernels TensorFlow's oneDNN bf16 matmul
    # crashes the process (TensorFlow 2.21), so there is no bf16 roof then.
    if keras.backend.backend() == "tensorflow" and not cpu.avx2_cap():
        bf16_gemm = _matmul_rate(config["sgemm_size"], "bfloat16", repeats=1)
    print(json.dumps({"ready": True, "onednn": onednn_enabled(), **info,
                      "sgemm_bf16": bf16_gemm,
                      "gflop": count_flops(model).flops / 1e9}), flush=True)

    for line in sys.stdin:
        if line.strip() != "round":
            break
        start = time.perf_counter()
        predict(batch, **kwargs)
        batch_s = time.perf_counter() - start
        single_s = float("inf")
        for _ in range(3):
            start = time.perf_counter()
            predict(single, **kwargs)
            single_s = min(single_s, time.perf_counter() - start)
        sgemm = _matmul_rate(config["sgemm_size"], compute_dtype)
        print(json.dumps({"batch_s": batch_s, "single_s": single_s, "sgemm": sgemm}),
              flush=True)
    peak, kind = _peak_memory_bytes()
    print(json.dumps({"peak_memory": peak, "memory_kind": kind}), flush=True)


# ---------------------------------------------------------------- parent side


class _Worker:
    def __init__(self, contestant, env, config):
        self.contestant = contestant
        self.onednn_env = env.get("TF_ENABLE_ONEDNN_OPTS")
        self.onednn = None
        payload = json.dumps({**config, "contestant": contestant})
        env = dict(env)
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        # The worker imports this package from wherever the parent did.
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (root, env.get("PYTHONPATH")) if p
        )
        self.process = subprocess.Popen(
            [sys.executable, "-m", "keras_xception.benchmark", "--worker", payload],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        self.rounds = []

    def _read(self):
        line = self.process.stdout.readline()
        if not line:
            code = self.process.wait()
            raise RuntimeError(f"benchmark worker {self.contestant!r} exited ({code})")
        return json.loads(line)

    def wait_ready(self):
        self.ready = self._read()
        self.onednn = self.ready["onednn"]

    def round(self):
        self.process.stdin.write("round\n")
        self.process.stdin.flush()
        self.rounds.append(self._read())

    def finish(self):
        self.process.stdin.write("quit\n")
        self.process.stdin.flush()
        final = self._read()
        self.process.wait()
        return final


def _cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _runtime_of(name):
    """The optional runtime module a contestant needs, or `None`."""
    from keras_xception.inference import onnxruntime as ort_runtime
    from keras_xception.inference import openvino as ov_runtime
    from keras_xception.inference import quantize

    if "int8" in name:
        return quantize
    if "onnxruntime" in name:
        return ort_runtime
    if "openvino" in name:
        return ov_runtime
    return None


def _check_request(only, weights, mixed_precision="none",
                   image_size=architecture.DEFAULT_SIZE):
    """Checks `only`, `weights`, `mixed_precision` and `image_size` before any work.

    Raises:
        ConfigError: For an `image_size` below `architecture.MIN_SIZE`; for
            an unknown contestant, or one whose runtime is not
            installed or needs the TensorFlow backend; for a named bf16
            contestant or `mixed_precision="bf16"` under an AVX2 cap of
            oneDNN's kernels (`_capped_out`).
        WeightsError: If `weights` is not a file.
    """
    import keras

    from keras_xception.errors import ConfigError, WeightsError

    if image_size < architecture.MIN_SIZE:
        raise ConfigError(
            f"--image-size must be at least {architecture.MIN_SIZE}, Xception's "
            f"smallest input. Received: --image-size {image_size}"
        )
    if only is not None and not all(only):
        raise ConfigError(
            f"--only names an empty contestant (a stray comma?). Received: "
            f"--only {','.join(only)!r}"
        )
    unknown = sorted(set(only or ()) - set(CONTESTANTS))
    if unknown:
        raise ConfigError(
            f"--only names unknown contestants: {', '.join(unknown)}. "
            f"Choose from: {', '.join(CONTESTANTS)}"
        )
    for name in only or ():
        runtime = _runtime_of(name)
        if runtime is None:
            continue
        if keras.backend.backend() != "tensorflow":
            raise ConfigError(
                f"--only {name} needs the TensorFlow backend. "
                f"Received: KERAS_BACKEND={keras.backend.backend()}"
            )
        if not runtime.installed():
            raise ConfigError(f"--only {name} needs {runtime.NAME}: {runtime.EXTRA}")
    for name in ["fast", *(only or ())]:  # `fast` always runs
        why = _capped_out(name, mixed_precision, keras.backend.backend())
        if why is not None:
            raise ConfigError(f"{why}: leave it out, or unset {cpu.isa_cap()[0]}")
    if weights is not None:
        if not os.path.isfile(weights):
            raise WeightsError(
                "--weights must be a no-top Xception weights file (.h5). "
                f"Received: --weights {weights!r}"
            )
        from keras_xception.source import WEIGHTS, open_source

        src = open_source(weights)
        if src.kind != WEIGHTS or src.has_top:
            raise WeightsError(
                "--weights must be a no-top Xception weights file (.h5); "
                f"{weights!r} holds {'a .keras model' if src.kind != WEIGHTS else 'the classifier top'}. "
                f"Received: --weights {weights!r}"
            )


def _capped_out(name, mixed_precision, backend):
    """Why contestant `name` cannot run under this process's oneDNN ISA cap, or `None`.

    Under an AVX2 cap (`cpu.AVX2_ISAS`) TensorFlow's oneDNN crashes the
    process on a bf16 matmul and OpenVINO cannot compile a bf16 model.
    """
    cap = cpu.avx2_cap()
    if backend != "tensorflow" or not cap:
        return None
    if mixed_precision == "bf16":
        what = "--mixed-precision bf16"
    elif name in ("fast-bfloat16", "fast-openvino-bfloat16"):
        what = name
    elif name == "openvino" and cpu.cpu_flags() & cpu.BF16_FLAGS:
        what = "openvino (OpenVINO's defaults pick bf16 on this CPU)"
    else:
        return None
    return f"{what} cannot run in bf16 while {cap[0]}={cap[1]} caps oneDNN below bf16"


def _available_gib():
    """Memory available to new processes (GiB), or `None` where unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) / 2**20
    except (OSError, ValueError, IndexError):
        pass
    return None


def run(batch_size=8, rounds=7, mixed_precision="none", sgemm_size=2048,
        compare="default", log=None, only=None, weights=None,
        image_size=architecture.DEFAULT_SIZE):
    """Runs the benchmark and returns its results as a dict.

    Args:
        batch_size: Images per throughput call.
        rounds: Measurement rounds; each contestant is measured once per
            round, in turn.
        mixed_precision: `"none"` (float32), `"bf16"` or `"fp16"`: the Keras
            dtype policy for every contestant.
        sgemm_size: Side of the square matmul that measures the machine's
            rate.
        compare: `"same"` (the references in the candidate's runtime),
            `"default"` (reference in TensorFlow's default runtime) or
            `"both"`; not used when `only` is given.
        log: Optional callable for progress messages.
        only: Optional collection of contestant names (of `CONTESTANTS`)
            to run instead of the default set (`fast` always runs: the
            ratios are against it).
        weights: Optional no-top Xception weights file for every
            contestant (random weights otherwise).
        image_size: Side of the square input images, at least 71
            (`architecture.MIN_SIZE`); 299, the model's own, by default.

    Returns:
        A dict with `machine`, `settings`, `skipped` (contestants not
        started for lack of memory, or that cannot run in bf16 under an AVX2
        cap of oneDNN's kernels, `ONEDNN_MAX_CPU_ISA`) and one entry per contestant under
        `results` (`img_per_s`, `batch_ms_per_image`, `latency_ms`,
        `sgemm_gflops`, `roofline`, `peak_memory_mb`, `prepare_s` (building
        the runtime and the first calls), `runtime`, `precision`,
        `min_cosine`, `onednn` (whether TensorFlow's oneDNN kernels ran,
        `None` under other backends), `onednn_env` (the worker's
        `TF_ENABLE_ONEDNN_OPTS`), ratios).

    Raises:
        ConfigError: For an `image_size` below 71; for an unknown
            contestant in `only`, or one whose runtime is not installed;
            for a bf16 contestant named in `only`,
            or `mixed_precision="bf16"`, under an AVX2 cap of oneDNN's
            kernels.
        WeightsError: If `weights` is not a file.
    """
    _check_request(only, weights, mixed_precision, image_size)
    import keras

    log = log or (lambda message: None)
    backend = keras.backend.backend()
    env = dict(os.environ)
    config = {"batch_size": batch_size, "mixed_precision": mixed_precision,
              "sgemm_size": sgemm_size, "image_size": image_size}
    if weights is not None:
        config["weights"] = os.path.abspath(os.fspath(weights))
    default_env = {k: v for k, v in env.items() if k != "TF_ENABLE_ONEDNN_OPTS"}
    if only:
        contestants = [(n, default_env if n == "reference-default" else env)
                       for n in CONTESTANTS if n in set(only) | {"fast"}]
    else:
        contestants = [(name, env) for name in FAST]
        contestants += [(name, env) for name in PEERS
                        if backend == "tensorflow" and _runtime_of(name).installed()]
        if compare in ("same", "both"):
            contestants[:0] = [("reference", env), ("reference-compiled", env)]
        if (
            compare in ("default", "both")
            and backend == "tensorflow"
            and (default_env != env or compare == "default")
        ):
            contestants.insert(0, ("reference-default", default_env))

    workers, skipped = [], []
    for name, worker_env in list(contestants):  # the default set's (named ones were checked)
        why = _capped_out(name, mixed_precision, backend)
        if why is None:
            continue
        log(f"skipping {name}: {why}")
        skipped.append(name)
        contestants.remove((name, worker_env))

    # Start one at a time so that loading does not overlap measurement.
    for name, worker_env in contestants:
        needed = CONVERSION_GIB if name in ("onnxruntime", "fast-onnxruntime") \
            else WORKER_GIB
        available = _available_gib()
        if name != "fast" and available is not None and available < needed:
            log(f"skipping {name}: {available:.1f} GiB of memory available, it needs "
                f"about {needed} GiB; run it with --only {name}")
            skipped.append(name)
            continue
        log(f"starting {name} ...")
        worker = _Worker(name, worker_env, config)
        worker.wait_ready()
        workers.append(worker)
    for index in range(rounds):
        log(f"round {index + 1}/{rounds}")
        for worker in workers:
            worker.round()
    log("stopping the workers ...")
    finals = {worker.contestant: worker.finish() for worker in workers}
    # Counted on the model the `fast` worker built (the parent builds none).
    gflop = next(w.ready["gflop"] for w in workers if w.contestant == "fast")

    results = {}
    for worker in workers:
        median = {key: statistics.median(r[key] for r in worker.rounds)
                  for key in ("batch_s", "single_s", "sgemm")}
        img_per_s = batch_size / median["batch_s"]
        results[worker.contestant] = {
            # Whether oneDNN ran (None outside TensorFlow), and the variable.
            "onednn": worker.onednn,
            "onednn_env": worker.onednn_env,
            "img_per_s": img_per_s,
            "batch_ms_per_image": 1000 * median["batch_s"] / batch_size,
            "latency_ms": 1000 * median["single_s"],
            "sgemm_gflops": median["sgemm"],
            "roofline": img_per_s * gflop / median["sgemm"],
            "bf16_roofline": (img_per_s * gflop / worker.ready["sgemm_bf16"]
                              if worker.ready.get("sgemm_bf16") else None),
            "runtime": worker.ready["runtime"],
            "prepare_s": worker.ready["prepare_s"],
            "precision": worker.ready["precision"],
            "min_cosine": worker.ready["min_cosine"],
            "peak_memory_mb": finals[worker.contestant]["peak_memory"] / 2**20,
            "memory_kind": finals[worker.contestant]["memory_kind"],
        }
    fast = results["fast"]
    for name, result in results.items():
        result["throughput_ratio"] = fast["img_per_s"] / result["img_per_s"]
        result["latency_ratio"] = result["latency_ms"] / fast["latency_ms"]
    return {
        "machine": {
            "cpu": _cpu_name(),
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "keras": keras.__version__,
            "backend": backend,
        },
        "skipped": skipped,
        "settings": {**config, "rounds": rounds, "model_gflop": gflop,
                     "onednn_env": env.get("TF_ENABLE_ONEDNN_OPTS")},
        "results": results,
    }


def _on_off(state):
    return {True: "on", False: "off"}.get(state, "n/a")


def _share(value):
    return "n/a" if value is None else f"{value:.0%}"


def format_table(report):
    """The results as a plain-text table (ratios are fast vs that row)."""
    settings = report["settings"]
    batch = settings["batch_size"]
    lines = [
        f"{report['machine']['cpu']} ({report['machine']['cpus']} CPUs), "
        f"Keras {report['machine']['keras']} / {report['machine']['backend']}, "
        f"batch {batch}, {settings['rounds']} rounds, "
        f"{settings['image_size']}x{settings['image_size']} images, "
        f"mixed precision: {settings['mixed_precision']}",
        f"{'contestant':<22} {'runtime':<30} {'prec':<8} {'min cos':>8} "
        f"{'oneDNN':>6} {'img/s':>7} {'ms/img':>7} "
        f"{'1-img ms':>9} {'fast x thr':>10} {'fast x lat':>10} "
        f"{'matmul GF/s':>11} {'roofline':>8} {'bf16 roof':>9} {'peak MB':>8} "
        f"{'prep s':>7}",
    ]
    for name, r in report["results"].items():
        lines.append(
            f"{name:<22} {r['runtime']:<30} {r['precision']:<8} {r['min_cosine']:>8.5f} "
            f"{_on_off(r['onednn']):>6} {r['img_per_s']:>7.2f} "
            f"{r['batch_ms_per_image']:>7.1f} {r['latency_ms']:>9.1f} "
            f"{r['throughput_ratio']:>9.2f}x {r['latency_ratio']:>9.2f}x "
            f"{r['sgemm_gflops']:>11.1f} {r['roofline']:>7.0%} "
            f"{_share(r.get('bf16_roofline')):>9} {r['peak_memory_mb']:>8.0f} "
            f"{r['prepare_s']:>7.1f}"
        )
    lines.append(
        f"roofline = img/s x {settings['model_gflop']:.2f} GFLOP / matmul GFLOP/s "
        f"({settings['sgemm_size']}^2 matmul, same process); "
        "bf16 roof: the same against a bf16 matmul; "
        "'fast x' = fast's (precision auto) advantage over that row; "
        "min cos: smallest cosine of that row's outputs to float32; "
        "prep s: building the runtime and the first calls."
    )
    if report.get("skipped"):
        lines.append(f"skipped for lack of memory: {', '.join(report['skipped'])}")
    return "\n".join(lines)


def add_arguments(parser, count=int):
    """The benchmark's options, shared by the script and the CLI.

    Args:
        parser: The `argparse` parser to add them to.
        count: The argparse `type` of the options that count something
            (`--batch-size`, `--rounds`, `--sgemm-size`); the command line
            passes one that rejects 0 and negative numbers as it parses.
    """
    parser.add_argument("--batch-size", type=count, default=8,
                        help="images per throughput call (default: 8)")
    parser.add_argument("--rounds", type=count, default=7,
                        help="alternating measurement rounds (default: 7)")
    parser.add_argument("--mixed-precision", choices=sorted(DTYPE_POLICIES),
                        default="none",
                        help="Keras dtype policy for every contestant: none "
                        "(float32), bf16 (mixed_bfloat16) or fp16 (mixed_float16)")
    parser.add_argument("--sgemm-size", type=count, default=2048,
                        help="side of the square matmul measuring the machine's "
                        "rate (default: 2048; use 8192 on a GPU)")
    parser.add_argument("--compare", choices=("same", "default", "both"),
                        default="default",
                        help="reference in the candidate's runtime (same), in "
                        "TensorFlow's default runtime (default, the default), "
                        "or both")
    parser.add_argument("--only", metavar="NAMES", type=lambda t: t.split(","),
                        help="comma-separated contestants to run instead of the "
                        "default set (fast always runs): " + ", ".join(CONTESTANTS))
    parser.add_argument("--weights", metavar="FILE",
                        help="no-top Xception weights for every contestant "
                        "(default: random weights; real ones make the minimum "
                        "cosine meaningful)")
    parser.add_argument("--image-size", type=count, default=architecture.DEFAULT_SIZE,
                        help="side of the square input images, at least 71 "
                        "(default: 299, the model's own; smaller is a quick "
                        "check, not a measurement of the model)")
    parser.add_argument("--json", metavar="PATH",
                        help="also write the results as JSON to PATH")


def main_from_args(args):
    """Runs the benchmark for parsed `args`, prints the table; returns 0."""
    from keras_xception.errors import ConfigError

    if args.batch_size < 1 or args.rounds < 1 or args.sgemm_size < 1:
        raise ConfigError(
            "--batch-size, --rounds and --sgemm-size must be positive. "
            f"Received: {args.batch_size}, {args.rounds}, {args.sgemm_size}"
        )
    report = run(
        batch_size=args.batch_size,
        rounds=args.rounds,
        mixed_precision=args.mixed_precision,
        sgemm_size=args.sgemm_size,
        compare=args.compare,
        only=args.only,
        weights=args.weights,
        image_size=args.image_size,
        log=lambda message: print(message, file=sys.stderr, flush=True),
    )
    print(format_table(report))
    if args.json:
        from keras_xception.fileio import write_text

        write_text(args.json, json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        _worker(json.loads(sys.argv[2]))
    else:
        parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
        add_arguments(parser)
        sys.exit(main_from_args(parser.parse_args()))
