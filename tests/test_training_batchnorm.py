"""BatchNormalization keeps its ImageNet statistics through both phases, on both backends.

Keras picks its backend once per process, so each backend's check runs in
a subprocess of its own, on the real ImageNet weights.
"""

import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]

CHECK = """
import sys
from keras_xception import tfenv
tfenv.install()  # Keras starts as in the command line: quicker.
import keras
import numpy as np
import tensorflow as tf

from keras_xception.transfer import build_classifier, fit_classifier

keras.utils.set_random_seed(0)
model = build_classifier(2, image_size=71, weights=sys.argv[1])
base = model.get_layer("xception")
bn = [l for l in base.layers if isinstance(l, keras.layers.BatchNormalization)]
stats = {l.name: [v.numpy().copy() for v in (l.moving_mean, l.moving_variance)] for l in bn}
trained = base.get_layer("block14_sepconv2").pointwise_kernel.numpy().copy()
frozen = base.get_layer("block12_sepconv3").pointwise_kernel.numpy().copy()
rng = np.random.default_rng(0)
images = rng.uniform(0, 255, (6, 71, 71, 3)).astype("float32")
labels = np.array([0, 1] * 3)
train = tf.data.Dataset.from_tensor_slices((images, labels)).batch(3)
fit_classifier(model, train, epochs=1, fine_tune_epochs=1, unfreeze_from="block14",
               fine_tune_learning_rate=1e-3, verbose=False)
for layer in bn:
    assert not layer.trainable, layer.name
    for before, var in zip(stats[layer.name], (layer.moving_mean, layer.moving_variance)):
        np.testing.assert_array_equal(before, var.numpy(), err_msg=layer.name)
after = base.get_layer("block14_sepconv2").pointwise_kernel.numpy()
assert not np.array_equal(trained, after), "phase 2 did not train block14"
np.testing.assert_array_equal(frozen, base.get_layer("block12_sepconv3").pointwise_kernel.numpy())
print("batchnorm statistics unchanged on", keras.backend.backend(), len(bn), "layers")
"""


def run_check(backend, weights):
    env = dict(os.environ, KERAS_BACKEND=backend, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2")
    result = subprocess.run(
        [sys.executable, "-c", CHECK, str(weights)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    assert f"unchanged on {backend} 40 layers" in result.stdout, result.stdout


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["tensorflow", "jax"])
def test_batchnorm_statistics_are_bit_equal_after_both_phases(backend, imagenet_notop_files):
    run_check(backend, imagenet_notop_files["keras3"])
