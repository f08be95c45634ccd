"""Training from scratch: `weights=None`, `include_top=False` and a custom head.

The common from-scratch case in one model (a training step costs ~7 s to
trace on 2 CPUs, so one model covers it): a 1-channel grayscale dataset of
small images resized to 71 (8x8 patterns made in the test, like a digits
dataset) and a 10-class head. The training loss must fall.
"""

import keras
import numpy as np
import pytest

from keras_xception import Xception


def fit(model, x, y, loss, epochs):
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=loss)
    # Keras's TensorFlow trainer would create Adam's variables inside the
    # first trace of its train step, and so trace it twice (~7 CPU-s more).
    model.optimizer.build(model.trainable_variables)
    return model.fit(
        x, y, batch_size=8, epochs=epochs, shuffle=True, verbose=0
    ).history["loss"]


@pytest.mark.slow
def test_grayscale_small_images_upsampled_to_71_ten_classes_loss_falls():
    # 10 classes of 8x8 grayscale images, as in a digits dataset: each class
    # is a fixed random pattern, each sample that pattern with noise. One
    # channel, from an `input_tensor`, resized to 71 (the smallest input).
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    templates = rng.uniform(0, 1, (10, 8, 8, 1)) > 0.5
    labels = np.repeat(np.arange(10), 4)
    noise = rng.normal(0, 0.15, (labels.size, 8, 8, 1))
    small = np.clip(templates[labels] + noise, 0, 1).astype("float32")
    images = keras.ops.convert_to_numpy(keras.ops.image.resize(small, (71, 71)))
    inputs = keras.Input((71, 71, 1))
    base = Xception(include_top=False, weights=None, input_tensor=inputs, pooling="avg")
    assert base.get_layer("block1_conv1").kernel.shape[2] == 1
    outputs = keras.layers.Dense(10, activation="softmax", name="digits")(base.output)
    model = keras.Model(inputs, outputs)
    losses = fit(
        model, images * 2 - 1, labels, "sparse_categorical_crossentropy", epochs=3
    )
    assert min(losses[-2:]) < 0.7 * losses[0], losses
