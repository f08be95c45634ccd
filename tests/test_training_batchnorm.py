"""BatchNormalization keeps its ImageNet statistics through both phases, on both backends.

The check runs in this pytest process, on its backend: TensorFlow here, and
JAX in the JAX rerun (tests/test_jax_backend.py runs the tests marked
`backends` again under JAX), on the real ImageNet weights.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_xception.transfer import build_classifier, fit_classifier


@pytest.mark.slow
@pytest.mark.backends
def test_batchnorm_statistics_are_bit_equal_after_both_phases(imagenet_notop_files):
    keras.utils.set_random_seed(0)
    model = build_classifier(2, image_size=71, weights=str(imagenet_notop_files["keras3"]))
    base = model.get_layer("xception")
    bn = [layer for layer in base.layers
          if isinstance(layer, keras.layers.BatchNormalization)]
    assert len(bn) == 40
    stats = {layer.name: [keras.ops.convert_to_numpy(v).copy()
                          for v in (layer.moving_mean, layer.moving_variance)]
             for layer in bn}

    def kernel(name):
        return keras.ops.convert_to_numpy(base.get_layer(name).pointwise_kernel).copy()

    trained, frozen = kernel("block14_sepconv2"), kernel("block12_sepconv3")
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (6, 71, 71, 3)).astype("float32")
    labels = np.array([0, 1] * 3)
    train = tf.data.Dataset.from_tensor_slices((images, labels)).batch(3)
    fit_classifier(model, train, epochs=1, fine_tune_epochs=1, unfreeze_from="block14",
                   fine_tune_learning_rate=1e-3, verbose=False)
    for layer in bn:
        assert not layer.trainable, layer.name
        for before, var in zip(stats[layer.name], (layer.moving_mean, layer.moving_variance)):
            np.testing.assert_array_equal(before, keras.ops.convert_to_numpy(var),
                                          err_msg=layer.name)
    assert not np.array_equal(trained, kernel("block14_sepconv2")), \
        "phase 2 did not train block14"
    np.testing.assert_array_equal(frozen, kernel("block12_sepconv3"))
