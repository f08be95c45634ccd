"""`optimize_for_inference`: same outputs, plain saveable Keras model."""

import keras
import numpy as np
import pytest

from keras_xception import Xception, optimize_for_inference
from keras_xception.architecture import weight_layout
from keras_xception.inference import fold_batch_norm
from keras_xception.preprocessing import load_image, preprocess_input


def synthetic_top(seed=0):
    """A fixed random Dense(2048 -> 1000) classifier: (kernel, bias)."""
    rng = np.random.default_rng(seed)
    return [
        rng.normal(0.0, 0.3, (2048, 1000)).astype("float32"),
        rng.normal(0.0, 0.05, (1000,)).astype("float32"),
    ]


@pytest.fixture(scope="module")
def real_model(imagenet_notop_arrays):
    """Xception with the real ImageNet no-top weights and a synthetic top."""
    model = Xception(weights=None)
    for entry, values in zip(weight_layout(False), imagenet_notop_arrays):
        model.get_layer(entry.name).set_weights(values)
    model.get_layer("predictions").set_weights(synthetic_top())
    return model


@pytest.fixture(scope="module")
def fast_model(real_model):
    return optimize_for_inference(real_model)


@pytest.fixture(scope="module")
def photos(kitchen_photos):
    return np.stack([preprocess_input(load_image(p)) for p in kitchen_photos[:3]])


def randomize_batch_norm(model, seed=1):
    """Gives every BatchNormalization non-trivial statistics to fold."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            n = layer.gamma.shape[0]
            layer.set_weights([
                rng.uniform(0.5, 1.5, n), rng.normal(0, 0.2, n),
                rng.normal(0, 0.2, n), rng.uniform(0.5, 2.0, n),
            ])


def test_fast_path_matches_plain_model_on_real_weights(real_model, fast_model, photos):
    expected = real_model.predict(photos, verbose=0)
    got = fast_model.predict(photos)
    assert got.shape == (3, 1000)
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)
    np.testing.assert_array_equal(got.argmax(-1), expected.argmax(-1))
    # The synthetic top is not uniform: the check above is not vacuous.
    assert expected.max() > 0.05
    # Compiling the fast path leaves the model's own layers as they were.
    relus = [l for l in fast_model.layers if isinstance(l, keras.layers.Activation)]
    assert relus and all(l.activation is keras.activations.relu for l in relus)


def test_fast_predict_batches_like_keras(fast_model, photos):
    whole = fast_model.predict(photos)
    np.testing.assert_allclose(fast_model.predict(photos, batch_size=2), whole, atol=1e-6)
    # Other inputs go to Keras's own predict and give the same numbers.
    np.testing.assert_allclose(
        fast_model.predict(photos, batch_size=2, verbose=1), whole, atol=1e-5
    )


def test_optimized_model_is_plain_keras_without_batch_norm(real_model, fast_model):
    assert type(fast_model) is type(real_model)
    kinds = {type(layer).__name__ for layer in fast_model.layers}
    assert "BatchNormalization" not in kinds
    assert all(type(layer) is getattr(keras.layers, type(layer).__name__)
               for layer in fast_model.layers)
    # Every conv took its BatchNormalization's shift as a bias.
    bns = [l for l in real_model.layers if isinstance(l, keras.layers.BatchNormalization)]
    bias = sum(l.filters for l in fast_model.layers
               if isinstance(l, (keras.layers.Conv2D, keras.layers.SeparableConv2D)))
    assert fast_model.count_params() == (
        real_model.count_params() - sum(4 * l.gamma.shape[0] for l in bns) + bias
    )
    # The input model is left as it was.
    assert len(bns) == 40 and real_model.get_layer("block1_conv1").bias is None


def test_optimized_model_saves_and_reloads(fast_model, photos, tmp_path):
    path = tmp_path / "fast.keras"
    fast_model.save(path)
    reloaded = keras.saving.load_model(path)
    assert "predict" not in vars(reloaded)  # a plain model, Keras's predict
    np.testing.assert_allclose(
        reloaded.predict(photos[:1], verbose=0), fast_model.predict(photos[:1]),
        atol=1e-6,
    )
    # Optimizing again brings the fast predict back and folds nothing more.
    again = optimize_for_inference(reloaded)
    assert len(again.layers) == len(reloaded.layers)


@pytest.mark.parametrize("pooling", [None, "avg", "max"])
def test_no_top_models_fold_exactly(pooling):
    model = Xception(weights=None, include_top=False, pooling=pooling,
                     input_shape=(96, 96, 3))
    randomize_batch_norm(model)
    x = np.random.default_rng(2).uniform(-1, 1, (2, 96, 96, 3)).astype("float32")
    fast = optimize_for_inference(model)
    expected = model.predict(x, verbose=0)
    got = fast.predict(x)
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


def test_keras_applications_model_folds():
    model = keras.applications.Xception(weights=None, include_top=False,
                                        input_shape=(80, 80, 3))
    randomize_batch_norm(model)
    x = np.random.default_rng(3).uniform(-1, 1, (1, 80, 80, 3)).astype("float32")
    folded = fold_batch_norm(model)
    assert not any(isinstance(l, keras.layers.BatchNormalization) for l in folded.layers)
    expected = keras.ops.convert_to_numpy(model(x))
    got = keras.ops.convert_to_numpy(folded(x))
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


def test_rejects_a_non_functional_model():
    from keras_xception.errors import ConfigError

    class Custom(keras.Model):
        def call(self, x):
            return x

    with pytest.raises(ConfigError, match="functional"):
        optimize_for_inference(Custom())
