"""scripts/benchmark_gpu.py on the CPU with `--small`, as the GPU machine runs it.

The GPU machine has JAX but no TensorFlow, so each run hides TensorFlow
(a `tensorflow` package on PYTHONPATH that raises ImportError, which is what
Keras's lazy import meets there) and runs under `KERAS_BACKEND=jax`. The runs
share the suite's JAX compilation cache (tests/conftest.py), so the model's
initializers compile once. Each run's timeout (RUN_TIMEOUT_S) bounds how
long the script may take at these sizes.
"""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "benchmark_gpu.py"
RUN_TIMEOUT_S = 120  # the full --small run took 60 s on 2 cores under a load of 5

pytestmark = pytest.mark.slow

REPORT_KEYS = {
    "device", "platform", "versions", "settings", "gflop_per_image",
    "train_gflop_per_image", "correctness", "matmul", "inference",
    "inference_stopped", "training", "breakdown", "targets", "passed",
    "stage_seconds", "elapsed_s",
}
INFERENCE_KEYS = {
    "dtype", "batch", "images_per_s", "ms_per_batch", "compile_s", "first_result_s",
    "tflops", "fraction_of_bf16_matmul", "compiled_memory_bytes", "peak_memory_bytes",
}
TRAINING_KEYS = {
    "batch", "dtype", "images_per_s", "ms_per_step", "compile_s", "first_result_s",
    "tflops", "fraction_of_bf16_matmul", "compiled_memory_bytes", "peak_memory_bytes",
    "last_loss", "trainable_weights",
}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("gpu_script")
    hidden = folder / "no_tensorflow" / "tensorflow"
    hidden.mkdir(parents=True)
    (hidden / "__init__.py").write_text(
        'raise ImportError("TensorFlow is hidden: the GPU machine has none")\n')
    return folder


@pytest.fixture(scope="module")
def env(workdir):
    return dict(
        os.environ,
        KERAS_BACKEND="jax",
        JAX_PLATFORMS="cpu",
        PYTHONPATH=str(workdir / "no_tensorflow"),
    )


def run_script(env, *args, cwd):
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], cwd=cwd, env=env,
        capture_output=True, text=True, timeout=RUN_TIMEOUT_S)


@pytest.fixture(scope="module")
def reference(workdir, env):
    path = workdir / "reference.npz"
    result = run_script(env, "--small", "--write-reference", str(path), cwd=workdir)
    assert result.returncode == 0, result.stderr[-3000:]
    return path


def tampered(reference, folder, name, **changes):
    with np.load(reference) as data:
        arrays = {key: data[key] for key in data.files}
    arrays.update(changes)
    path = folder / name
    np.savez(path, **arrays)
    return path


def test_reference_round_trip_passes_and_json_has_every_number(reference, workdir, env):
    out = workdir / "report.json"
    result = run_script(env, "--small", "--reference", str(reference), "--json", str(out),
                        cwd=workdir)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stderr.strip() == ""
    assert "| float32 vs CPU reference" in result.stdout
    assert "| fine-tuning step |" in result.stdout

    report = json.loads(out.read_text())
    assert REPORT_KEYS <= report.keys()
    assert report["passed"] is True
    assert report["platform"] == "cpu"
    assert set(report["versions"]) >= {"jax", "keras", "keras_xception"}
    c = report["correctness"]
    assert c["float32"]["passed"] and c["float32"]["max_rel_error"] <= 1e-4
    assert c["bfloat16"]["passed"] and c["bfloat16"]["min_cosine"] >= 0.998
    assert report["matmul"]["bfloat16_tflops"] > 0
    assert report["matmul"]["float32_highest_tflops"] > 0
    # CPU: no device memory statistics, but XLA's own estimate.
    for row in report["inference"] + report["training"]:
        assert row["images_per_s"] > 0 and row["first_result_s"] > 0
        assert row["peak_memory_bytes"] is None
        assert row["compiled_memory_bytes"] > 0
    assert {row["dtype"] for row in report["inference"]} == {"float32", "bfloat16"}
    assert all(INFERENCE_KEYS <= row.keys() for row in report["inference"])
    assert [row["batch"] for row in report["training"]] == [2]
    assert all(TRAINING_KEYS <= row.keys() for row in report["training"])
    parts = {row["part"] for row in report["breakdown"]["rows"]}
    assert {"depthwise", "pointwise"} <= parts
    assert report["targets"]["bf16_inference_batch_256"]["value"] is None  # batch 2 only
    assert report["targets"]["fine_tuning_step"]["met"] is False


def test_tampered_outputs_fail_with_one_line(reference, workdir, env):
    with np.load(reference) as data:
        logits = data["logits"] * np.float32(1.01)
    path = tampered(reference, workdir, "tampered.npz", logits=logits)
    result = run_script(env, "--small", "--check-only", "--reference", str(path),
                        cwd=workdir)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "correctness check failed" in lines[0], result.stderr
    assert "Traceback" not in result.stderr
    assert "| FAIL |" in result.stdout


@pytest.mark.parametrize("case", ["missing", "other_shape", "not_npz", "full_size"])
def test_unusable_reference_is_one_line_before_any_model(case, reference, workdir, env):
    args = ["--small"]
    if case == "missing":
        path = workdir / "absent.npz"
    elif case == "other_shape":
        with np.load(reference) as data:
            path = tampered(reference, workdir, "short.npz", logits=data["logits"][:, :999])
    elif case == "not_npz":
        path = workdir / "not.npz"
        path.write_text("not a zip file")
    else:  # a --small reference given to a full-size run
        path, args = reference, []
    result = run_script(env, *args, "--reference", str(path), cwd=workdir)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("benchmark_gpu.py: error: "), result.stderr
    assert result.stdout == ""
