"""The `numerics` tests again, with TensorFlow's oneDNN in the other state.

TensorFlow decides once, when it starts, whether it runs its oneDNN kernels
(`TF_ENABLE_ONEDNN_OPTS`, else by the CPU), so the tests marked `numerics`
(numbers compared across kernels) run a second time in a pytest process of
their own with the variable set to the state this process does not have.
They then pass with oneDNN on and off whatever this CPU's default is. Its
output is shown on failure.
"""

import os
import pathlib
import subprocess
import sys

import pytest

from keras_xception.inference import onednn_enabled

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_numerics_pass_with_onednn_in_the_other_state():
    import keras

    if keras.backend.backend() != "tensorflow":
        pytest.skip("this pytest process does not run TensorFlow's kernels")
    here = onednn_enabled()
    assert here is not None, "cannot tell whether TensorFlow's oneDNN is on in this process"
    other = "0" if here else "1"
    env = dict(os.environ, TF_ENABLE_ONEDNN_OPTS=other)
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", "0",
         "-m", "numerics"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800,
    )
    tail = (result.stdout + result.stderr)[-6000:]
    assert result.returncode != 5, f"no test is marked numerics:\n{tail}"
    assert result.returncode == 0, (
        f"numerics tests with TF_ENABLE_ONEDNN_OPTS={other} (here oneDNN is "
        f"{'on' if here else 'off'}) failed:\n{tail}")
    last = result.stdout.strip().splitlines()[-1]
    assert " passed" in last and "failed" not in last, tail
