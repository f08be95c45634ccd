"""The `numerics` tests again, with TensorFlow's oneDNN in the other state.

TensorFlow decides once, when it starts, whether it runs its oneDNN kernels
(`TF_ENABLE_ONEDNN_OPTS`, else by the CPU), so the tests marked `numerics`
(numbers compared across kernels) run a second time in a pytest process of
their own with the variable set to the state this process does not have.
They then pass with oneDNN on and off whatever this CPU's default is. The
rerun is two processes, the Grad-CAM, export and precision tests in one
and the rest in the other (any new file with `numerics` tests goes to the
second), which run at low priority beside the rest of the suite
(tests/background.py): what is left of them when the workers are done then
takes two CPUs, not one. Their output is shown on failure.
"""

import os
import pathlib
import sys

import pytest

from keras_xception.inference import onednn_enabled
from tests import background

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _other_state():
    """The value of TF_ENABLE_ONEDNN_OPTS this process does not run with, or
    None where it runs no TensorFlow kernels or cannot tell."""
    import keras

    if keras.backend.backend() != "tensorflow":
        return None
    here = onednn_enabled()
    return None if here is None else ("0" if here else "1")


FIRST_PART = ["tests/test_explain.py", "tests/test_export.py", "tests/test_precision.py"]
PARTS = {"first": FIRST_PART, "rest": [f"--ignore={path}" for path in FIRST_PART]}


def rerun_command(part):
    other = _other_state()
    if other is None:
        return None
    return ([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", "0",
             "-m", "numerics", *PARTS[part]],
            dict(os.environ, TF_ENABLE_ONEDNN_OPTS=other), ROOT)


@pytest.mark.slow
@pytest.mark.parametrize("part", background.in_parts("onednn_rerun", rerun_command, PARTS))
def test_numerics_pass_with_onednn_in_the_other_state(part, request):
    import keras

    if keras.backend.backend() != "tensorflow":
        pytest.skip("this pytest process does not run TensorFlow's kernels")
    here = onednn_enabled()
    assert here is not None, "cannot tell whether TensorFlow's oneDNN is on in this process"
    other = "0" if here else "1"
    status, output = background.result(*request.node.get_closest_marker("background").args)
    tail = output[-6000:]
    assert status != 5, f"no test of {PARTS[part]} is marked numerics:\n{tail}"
    assert status == 0, (
        f"numerics tests with TF_ENABLE_ONEDNN_OPTS={other} (here oneDNN is "
        f"{'on' if here else 'off'}) failed ({status}):\n{tail}")
    last = background.last_summary(output)
    assert last and "failed" not in last, tail
