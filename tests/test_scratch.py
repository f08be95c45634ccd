"""Training from scratch: `weights=None`, `include_top=False` and a custom head.

The two common from-scratch cases: a 1-channel grayscale dataset with a 1-unit
linear regression head, and a 10-class dataset of small images resized to 71
(8x8 patterns made in the test, like a digits dataset). The training loss must fall.
"""

import keras
import numpy as np
import pytest

from keras_xception import Xception


def fit(model, x, y, loss, epochs):
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=loss)
    return model.fit(
        x, y, batch_size=8, epochs=epochs, shuffle=True, verbose=0
    ).history["loss"]


@pytest.mark.slow
def test_grayscale_regression_loss_falls():
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    # Target: the fraction of the image covered by a bright square.
    images = np.zeros((32, 71, 71, 1), "float32")
    sides = rng.integers(8, 64, 32)
    for image, side in zip(images, sides, strict=True):
        image[:side, :side] = 1.0
    targets = (sides.astype("float32") / 71) ** 2
    base = Xception(
        include_top=False, weights=None, input_shape=(71, 71, 1), pooling="avg"
    )
    assert base.get_layer("block1_conv1").kernel.shape[2] == 1
    output = keras.layers.Dense(1, name="regression")(base.output)
    model = keras.Model(base.input, output)
    losses = fit(model, images * 2 - 1, targets, "mse", epochs=4)
    assert min(losses[-2:]) < 0.5 * losses[0], losses


@pytest.mark.slow
def test_ten_class_small_images_upsampled_to_71_loss_falls():
    # 10 classes of 8x8 images, as in a digits dataset: each class is a fixed
    # random pattern, each sample that pattern with noise.
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    templates = rng.uniform(0, 1, (10, 8, 8, 1)) > 0.5
    labels = np.repeat(np.arange(10), 4)
    noise = rng.normal(0, 0.15, (labels.size, 8, 8, 1))
    small = np.clip(templates[labels] + noise, 0, 1).astype("float32")
    images = keras.ops.convert_to_numpy(
        keras.ops.image.resize(np.repeat(small, 3, axis=-1), (71, 71))
    )
    inputs = keras.Input((71, 71, 3))
    features = Xception(
        include_top=False, weights=None, input_tensor=inputs, pooling="avg"
    ).output
    outputs = keras.layers.Dense(10, activation="softmax", name="digits")(features)
    model = keras.Model(inputs, outputs)
    losses = fit(
        model, images * 2 - 1, labels, "sparse_categorical_crossentropy", epochs=3
    )
    assert min(losses[-2:]) < 0.7 * losses[0], losses
