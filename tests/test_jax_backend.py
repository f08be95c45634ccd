"""The model, preprocessing and BatchNorm tests, run again under `KERAS_BACKEND=jax`.

Keras picks its backend once per process, so the JAX run is a separate
pytest process over the same test files; its output is shown on failure.
It runs the fast tests (among them equality with keras.applications, on
random and on the real weights, and a keras.applications `.keras` file
loaded), every `numerics` one (mixed precision, channels_first) and every
`backends` one (BatchNorm statistics through both training phases); the
other slow ones build full-size models to check shapes and files, which do
not depend on the backend, and run under TensorFlow only.
"""

import os
import pathlib
import subprocess
import sys

import keras
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
BACKEND_NEUTRAL_TESTS = ["tests/test_model.py", "tests/test_preprocessing.py",
                         "tests/test_training_batchnorm.py"]


@pytest.mark.slow
def test_model_tests_pass_under_jax():
    if keras.backend.backend() == "jax":
        pytest.skip("this pytest process already runs under KERAS_BACKEND=jax")
    env = dict(os.environ, KERAS_BACKEND="jax", JAX_PLATFORMS="cpu")
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", "0",
         "-m", "not slow or numerics or backends", *BACKEND_NEUTRAL_TESTS],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    tail = (result.stdout + result.stderr)[-6000:]
    assert result.returncode == 0, f"JAX run failed:\n{tail}"
    assert " passed" in result.stdout and "failed" not in result.stdout.splitlines()[-1], tail
