"""`keras-xception benchmark` runs end to end and reports what it promises.

Only the shape of the report is checked here, never a speed: timings belong
in the benchmark's own runs, not in tests.
"""

import json
import os

import pytest

from tests import commandline


def benchmark(*args, **extra_env):
    # As a user runs it: TF_ENABLE_ONEDNN_OPTS left for the command to decide.
    env = {k: v for k, v in os.environ.items() if k != "TF_ENABLE_ONEDNN_OPTS"}
    return commandline.run("benchmark", *args, env={**env, **extra_env}, timeout=600)


def test_benchmark_writes_table_and_json(tmp_path):
    out = tmp_path / "bench.json"
    done = benchmark("--rounds", "1", "--batch-size", "2", "--sgemm-size", "128",
                     "--compare", "same", "--json", out)
    assert done.returncode == 0, done.stderr
    report = json.loads(out.read_text())
    results = report["results"]
    assert list(results) == ["reference", "reference-compiled", "fast"]
    gflop = report["settings"]["model_gflop"]
    assert gflop == pytest.approx(16.71, abs=0.01)
    for name, r in results.items():
        assert r["img_per_s"] > 0 and r["latency_ms"] > 0 and r["peak_memory_mb"] > 0
        assert r["roofline"] == pytest.approx(r["img_per_s"] * gflop / r["sgemm_gflops"])
        assert r["throughput_ratio"] == pytest.approx(
            results["fast"]["img_per_s"] / r["img_per_s"])
        assert name in done.stdout  # one table row each
    assert results["fast"]["throughput_ratio"] == 1.0
    # The command line turns oneDNN on for every contestant of "same".
    assert {r["onednn"] for r in results.values()} == {"1"}
    assert "roofline" in done.stdout


def test_bad_settings_exit_1_without_traceback():
    done = benchmark("--rounds", "0")
    assert done.returncode == 1
    assert "--rounds" in done.stderr and "Traceback" not in done.stderr


def test_runs_under_jax_with_bf16(tmp_path):
    # The GPU measurement's command (KERAS_BACKEND=jax, bf16), at a tiny size.
    out = tmp_path / "bench.json"
    done = benchmark("--rounds", "1", "--batch-size", "1", "--sgemm-size", "64",
                     "--mixed-precision", "bf16", "--compare", "default",
                     "--json", out, KERAS_BACKEND="jax")
    assert done.returncode == 0, done.stderr
    report = json.loads(out.read_text())
    assert report["machine"]["backend"] == "jax"
    assert report["settings"]["mixed_precision"] == "bf16"
    assert list(report["results"]) == ["fast"]
    assert report["results"]["fast"]["onednn"] == "n/a"
    assert report["results"]["fast"]["img_per_s"] > 0
