"""`keras-xception benchmark` runs end to end and reports what it measured.

No speed is asserted here, nor any time measured by the test: timings belong
in the benchmark's own runs, and a busy machine would change them. What is
checked is that every derived number and column follows from what was
measured, and which kernels each contestant ran.
"""

import json
import os

import pytest

from tests import commandline


def benchmark(*args, **extra_env):
    # As a user runs it: TF_ENABLE_ONEDNN_OPTS left for the command to decide.
    env = {k: v for k, v in os.environ.items() if k != "TF_ENABLE_ONEDNN_OPTS"}
    return commandline.run("benchmark", *args, env={**env, **extra_env}, timeout=600)


def table_rows(stdout):
    """Contestant name -> the table's cells after it."""
    return {line.split()[0]: line.split()[1:] for line in stdout.splitlines()
            if line.split() and line.split()[0].startswith(("reference", "fast"))}


@pytest.mark.slow
def test_benchmark_reports_what_it_measured(tmp_path, onednn_by_default):
    out = tmp_path / "bench.json"
    batch = 2
    scratch = tmp_path / "tmp"  # The workers' TMPDIR: int8's throw-away cache.
    scratch.mkdir()
    # At Xception's smallest input (1/17 of 299x299's pixels): what is
    # checked here does not depend on the size.
    done = benchmark(
        "--rounds", "1", "--batch-size", batch, "--sgemm-size", "256",
        "--image-size", "71", "--compare", "both", "--json", out,
        "--only", "reference-default,reference,fast-int8", TMPDIR=str(scratch))
    assert done.returncode == 0, done.stderr
    assert list(scratch.iterdir()) == []  # Nothing left behind.
    stdout = done.stdout
    # The round ran: each worker reported it before being stopped.
    stderr = [line.strip() for line in done.stderr.splitlines()]
    assert stderr.index("round 1/1") < stderr.index("stopping the workers ...")
    report = json.loads(out.read_text())
    results = report["results"]
    assert list(results) == ["reference-default", "reference", "fast", "fast-int8"]
    # int8 calibrated in the worker on images of the size asked for.
    assert results["fast-int8"]["precision"] == "int8"

    # Each contestant measured a batch call and a single-image call.
    for name, r in results.items():
        assert 0 < r["img_per_s"] < float("inf"), (name, r)
        assert 0 < r["latency_ms"] < float("inf"), (name, r)

    gflop = report["settings"]["model_gflop"]
    assert report["settings"]["image_size"] == 71
    import keras

    from keras_xception.flops import count_flops

    reference = keras.applications.Xception(weights=None, include_top=False,
                                            pooling="avg", input_shape=(71, 71, 3))
    assert gflop == pytest.approx(count_flops(reference).flops / 1e9, rel=1e-6)
    assert f"batch {batch}, 1 rounds, 71x71 images" in stdout
    fast = results["fast"]
    rows = table_rows(stdout)
    for name, r in results.items():
        assert r["peak_memory_mb"] > 100  # a loaded TensorFlow and Xception
        assert r["batch_ms_per_image"] == pytest.approx(1000 / r["img_per_s"])
        assert r["roofline"] == pytest.approx(r["img_per_s"] * gflop / r["sgemm_gflops"])
        assert r["throughput_ratio"] == pytest.approx(fast["img_per_s"] / r["img_per_s"])
        assert r["latency_ratio"] == pytest.approx(r["latency_ms"] / fast["latency_ms"])
        # runtime (may hold spaces), precision, min cos, oneDNN, img/s, ...
        cells = rows[name][-13:]
        assert cells[0] == r["precision"] and cells[1] == f"{r['min_cosine']:.5f}"
        assert r["min_cosine"] > (0.9 if name == "fast-int8" else 0.998), name
        cells = cells[2:]  # oneDNN, img/s, ms/img, 1-img ms, ...
        assert cells[1:4] == [f"{r['img_per_s']:.2f}", f"{r['batch_ms_per_image']:.1f}",
                              f"{r['latency_ms']:.1f}"]
        assert cells[0] == ("on" if r["onednn"] else "off")
        assert cells[-1] == f"{r['prepare_s']:.1f}" and r["prepare_s"] > 0
    assert fast["throughput_ratio"] == fast["latency_ratio"] == 1.0

    # oneDNN: the command turns it on for its own contestants; the
    # reference-default process leaves the variable unset, and then
    # TensorFlow decides by the CPU (on for AVX-512 VNNI/BF16 or AMX CPUs).
    for name in ("reference", "fast"):
        assert (results[name]["onednn"], results[name]["onednn_env"]) == (True, "1")
    default = results["reference-default"]
    assert (default["onednn"], default["onednn_env"]) == (onednn_by_default, None)
    assert "roofline" in stdout


def test_bad_settings_exit_1_without_traceback(run_cli):
    status, _, err = run_cli("benchmark", "--rounds", "0")
    assert status == 1
    assert "--rounds" in err and "Traceback" not in err


def test_an_image_size_below_xceptions_smallest_is_one_line(run_cli, monkeypatch):
    import subprocess

    def never(*args, **kwargs):
        raise AssertionError("a worker was started")

    monkeypatch.setattr(subprocess, "Popen", never)
    status, out, err = run_cli("benchmark", "--image-size", "70", "--only", "fast")
    assert status == 1 and not out
    assert err == ("error: --image-size must be at least 71, Xception's smallest "
                   "input. Received: --image-size 70\n")


def test_a_missing_runtime_or_weights_file_is_refused_before_any_worker(monkeypatch,
                                                                          tmp_path):
    from keras_xception import benchmark
    from keras_xception.errors import ConfigError, WeightsError
    from keras_xception.inference import openvino as ov_runtime

    monkeypatch.setattr(ov_runtime, "installed", lambda: False)
    monkeypatch.setattr(benchmark, "_Worker", None)  # starting one would fail
    with pytest.raises(ConfigError, match=r"--only openvino needs openvino: .*\[openvino\]"):
        benchmark.run(only=["openvino"])
    with pytest.raises(WeightsError, match="Received: --weights"):
        benchmark.run(only=["fast"], weights=str(tmp_path / "missing.h5"))
    (tmp_path / "fake.h5").write_text("not HDF5")
    with pytest.raises(WeightsError, match="fake.h5"):
        benchmark.run(only=["fast"], weights=str(tmp_path / "fake.h5"))
    with pytest.raises(ConfigError, match="empty contestant"):
        benchmark.run(only=["fast", ""])


def test_bf16_contestants_under_an_avx2_cap_of_onednn_are_refused_or_skipped(
        monkeypatch):
    """TensorFlow's oneDNN crashes on a bf16 matmul under the cap, and
    OpenVINO cannot compile bf16: named, one line; in the default set, left out."""
    from keras_xception import benchmark
    from keras_xception.errors import ConfigError
    from keras_xception.inference import cpu

    for name in cpu.ISA_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    monkeypatch.setattr(cpu, "cpu_flags", lambda: frozenset({"avx2", "avx512_bf16"}))
    monkeypatch.setattr(benchmark, "_Worker", None)  # starting one would fail
    for only in (["openvino"], ["fast-bfloat16"]):
        with pytest.raises(ConfigError, match=rf"^{only[0]}.* cannot run in bf16 while "
                           r"ONEDNN_MAX_CPU_ISA=AVX2 caps oneDNN below bf16: leave it out"):
            benchmark.run(only=only)
    with pytest.raises(ConfigError, match=r"^--mixed-precision bf16 cannot run"):
        benchmark.run(only=["fast"], mixed_precision="bf16")
    for name in ("fast-bfloat16", "openvino", "fast", "fast-float32"):
        expected = None if name.startswith("fast") and name != "fast-bfloat16" else "AVX2"
        why = benchmark._capped_out(name, "none", "tensorflow")
        assert (why is None) if expected is None else (expected in why), (name, why)
    assert benchmark._capped_out("fast-bfloat16", "none", "jax") is None


def test_an_unknown_contestant_is_one_line_naming_the_choices(run_cli):
    status, out, err = run_cli("benchmark", "--only", "fast,openvino-bf16")
    assert status == 1 and not out
    assert err.count("\n") == 1
    assert "openvino-bf16" in err and "fast-openvino-bfloat16" in err


@pytest.mark.slow
def test_runs_under_jax_with_bf16(tmp_path):
    # The GPU measurement's command (KERAS_BACKEND=jax, bf16), at a tiny size.
    out = tmp_path / "bench.json"
    done = benchmark("--rounds", "1", "--batch-size", "1", "--sgemm-size", "64",
                     "--image-size", "71", "--mixed-precision", "bf16", "--compare", "default",
                     "--json", out, "--only", "fast", KERAS_BACKEND="jax")
    assert done.returncode == 0, done.stderr
    report = json.loads(out.read_text())
    assert report["machine"]["backend"] == "jax"
    assert report["settings"]["mixed_precision"] == "bf16"
    assert list(report["results"]) == ["fast"]
    # TensorFlow's oneDNN does not apply to JAX: neither on nor off.
    assert report["results"]["fast"]["onednn"] is None
    assert table_rows(done.stdout)["fast"][-11] == "n/a"
    assert report["results"]["fast"]["img_per_s"] > 0
