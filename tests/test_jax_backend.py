"""The model, preprocessing and BatchNorm tests, run again under `KERAS_BACKEND=jax`.

Keras picks its backend once per process, so the JAX run is a separate
pytest process over the same test files; its output is shown on failure.
It runs the fast tests (among them equality with keras.applications, on
random and on the real weights, and a keras.applications `.keras` file
loaded), every `numerics` one (mixed precision, channels_first) and every
`backends` one (BatchNorm statistics through both training phases); the
other slow ones build full-size models to check shapes and files, which do
not depend on the backend, and run under TensorFlow only. The run is two
processes, the BatchNorm training test in one and the model and
preprocessing tests in the other, which run at low priority beside the rest
of the suite (tests/background.py): what is left of them when the workers
are done then takes two CPUs, not one.
"""

import os
import pathlib
import sys

import keras
import pytest

from tests import background

ROOT = pathlib.Path(__file__).resolve().parents[1]
PARTS = {"model": ["tests/test_model.py", "tests/test_preprocessing.py"],
         "training": ["tests/test_training_batchnorm.py"]}


def rerun_command(part):
    if keras.backend.backend() == "jax":
        return None
    return ([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", "0",
             "-m", "not slow or numerics or backends", *PARTS[part]],
            dict(os.environ, KERAS_BACKEND="jax", JAX_PLATFORMS="cpu"), ROOT)


@pytest.mark.slow
@pytest.mark.parametrize("part", background.in_parts("jax_rerun", rerun_command, PARTS))
def test_model_tests_pass_under_jax(part, request):
    if keras.backend.backend() == "jax":
        pytest.skip("this pytest process already runs under KERAS_BACKEND=jax")
    status, output = background.result(*request.node.get_closest_marker("background").args)
    tail = output[-6000:]
    assert status != 5, f"no test of {PARTS[part]} was selected:\n{tail}"
    assert status == 0, f"JAX run of {PARTS[part]} failed ({status}):\n{tail}"
    last = background.last_summary(output)
    assert last and "failed" not in last, tail
