"""`optimize_for_inference` in float32: same outputs, plain saveable Keras model."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from keras_xception import Xception, optimize_for_inference
from keras_xception.architecture import weight_layout
from keras_xception.inference import fold_batch_norm
from keras_xception.preprocessing import load_image, preprocess_input
from tests.realweights import synthetic_top


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
    # The folding is the subject here, not the runtime choice: the "keras"
    # runtime skips OpenVINO's conversion, which "auto" picks where installed.
    return optimize_for_inference(real_model, "float32", runtime="keras")


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


@pytest.mark.slow
@pytest.mark.numerics
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


@pytest.mark.slow
@pytest.mark.numerics
def test_fast_predict_batches_like_keras(fast_model, photos):
    """Any batch size gives the same probabilities, up to float32 rounding.

    oneDNN picks its kernels (and so its summation order) by batch size, so
    batches of 2 and of 3 differ in the last bits of float32: about 1e-5 of
    a probability, where a row computed with the wrong image or weights
    differs by orders of magnitude more.
    """
    whole = fast_model.predict(photos)
    halves = fast_model.predict(photos, batch_size=2)
    np.testing.assert_allclose(halves, whole, rtol=1e-4, atol=1e-6)
    np.testing.assert_array_equal(halves.argmax(-1), whole.argmax(-1))
    # Other inputs go to Keras's own predict and give the same numbers.
    np.testing.assert_allclose(
        fast_model.predict(photos, batch_size=2, verbose=1), whole,
        rtol=1e-4, atol=1e-6,
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


@pytest.mark.slow
@pytest.mark.numerics
def test_optimized_model_saves_and_reloads(real_model, fast_model, photos, tmp_path):
    path = tmp_path / "fast.keras"
    fast_model.save(path)
    reloaded = keras.saving.load_model(path)
    assert "predict" not in vars(reloaded)  # a plain model, Keras's predict
    expected = real_model.predict(photos, verbose=0)
    np.testing.assert_allclose(
        reloaded.predict(photos, verbose=0), fast_model.predict(photos),
        rtol=1e-4, atol=1e-6,
    )
    # Optimizing again brings the fast predict back, folds nothing more and
    # still computes the original model's function.
    again = optimize_for_inference(reloaded, "float32", runtime="keras")
    assert "predict" in vars(again)
    assert [layer.name for layer in again.layers] == [
        layer.name for layer in reloaded.layers
    ]
    got = again.predict(photos)
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)
    np.testing.assert_array_equal(got.argmax(-1), expected.argmax(-1))


@pytest.mark.slow
@pytest.mark.numerics
@pytest.mark.parametrize("pooling", [None, "avg", "max"])
def test_no_top_models_fold_exactly(pooling):
    model = Xception(weights=None, include_top=False, pooling=pooling,
                     input_shape=(96, 96, 3))
    randomize_batch_norm(model)
    x = np.random.default_rng(2).uniform(-1, 1, (2, 96, 96, 3)).astype("float32")
    fast = optimize_for_inference(model, "float32", runtime="keras")
    expected = model.predict(x, verbose=0)
    got = fast.predict(x)
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


@pytest.mark.numerics
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


def test_a_folded_copy_keeps_every_layers_own_initializers(augmented_classifier):
    """The copy is built without random values (its weights are set right
    after), then given back each layer's initializers: a layer's config, a
    nested model's included, is the original's but for what folding sets."""
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, kernel_initializer=keras.initializers.HeNormal(seed=3),
                            bias_initializer="ones", name="conv")(inputs)
    x = keras.layers.BatchNormalization(gamma_initializer="zeros", name="bn")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(2, kernel_initializer="orthogonal", name="dense")(x)
    small = keras.Model(inputs, outputs)

    def initializers(model):
        found = {}
        for layer in model.layers:
            if isinstance(layer, keras.Model):
                found.update(initializers(layer))
            for key, value in layer.get_config().items():
                if key.endswith("_initializer"):
                    found[(layer.name, key)] = value
        return found

    from keras_xception.inference.fold import with_dtype_policy

    for model in (small, augmented_classifier["build_classifier"]):
        before, after = initializers(model), initializers(fold_batch_norm(model))
        assert after and all(before[key] == value for key, value in after.items())
        assert initializers(with_dtype_policy(model, "mixed_bfloat16")) == before
    assert initializers(fold_batch_norm(small))[("conv", "kernel_initializer")][
        "class_name"] == "HeNormal"


def test_rejects_a_non_functional_model():
    from keras_xception.errors import ConfigError

    class Custom(keras.Model):
        def call(self, x):
            return x

    with pytest.raises(ConfigError, match="functional"):
        optimize_for_inference(Custom())


# --- layers that do nothing at inference ------------------------------------------

# Each class's required arguments (the rest keep Keras's defaults).
IDENTITY_ARGS = {
    "rate": 0.3, "stddev": 0.5, "factor": 0.3,
    "height_factor": 0.3, "width_factor": 0.3,
}


def test_each_layer_left_out_returns_its_input_at_inference_in_keras():
    """fold leaves out these layers (`_INFERENCE_IDENTITY`): Keras itself
    gives back the input unchanged for each when `training=False`."""
    import inspect

    from keras_xception.inference.fold import _INFERENCE_IDENTITY

    images = np.random.default_rng(4).uniform(0, 255, (2, 72, 72, 3)).astype("float32")
    shaped = {"1D": images.reshape(2, 72, 216), "3D": images[:, None]}
    for name in sorted(_INFERENCE_IDENTITY):
        cls = getattr(keras.layers, name)
        required = [p.name for p in inspect.signature(cls).parameters.values()
                    if p.default is inspect.Parameter.empty
                    and p.kind == p.POSITIONAL_OR_KEYWORD]
        layer = cls(**{arg: IDENTITY_ARGS[arg] for arg in required})
        x = shaped.get(name[-2:], images)
        np.testing.assert_array_equal(
            keras.ops.convert_to_numpy(layer(x, training=False)), x, err_msg=name)


def _small_models():
    """Models where leaving out a do-nothing layer could go wrong, if done naively."""
    L = keras.layers
    a, b = keras.Input((4,)), keras.Input((4,))
    shared = L.Dense(3, name="shared")
    ya, yb = shared(a), shared(b)  # Dropout reads the second call's output.
    shared_call = keras.Model([a, b], L.Dense(2)(L.Dropout(0.5)(yb)) + ya[:, :2])

    o = keras.Input((4,))
    inner_in = keras.Input((4,))
    inner = keras.Model(inner_in, [L.Dense(3)(inner_in), L.Dense(3)(inner_in) * 2.0])
    p, q = inner(o)  # Dropout reads the second output.
    second_output = keras.Model(o, L.Dense(2)(L.Dropout(0.5)(q)) + p[:, :2])

    i = keras.Input((8, 8, 3), dtype="uint8")  # RandomFlip casts to float32.
    integer_input = keras.Model(i, L.Conv2D(2, 3)(L.RandomFlip()(i)))

    @keras.saving.register_keras_serializable(package="tests")
    class Dropout(L.Layer):  # A custom layer named like Keras's: kept.
        def call(self, x):
            return x * 3.0

    c = keras.Input((4,))
    custom = keras.Model(c, L.Dense(2)(Dropout()(L.Dense(3)(c))))

    d = keras.Input((4,))
    output_dropout = keras.Model(d, L.Dropout(0.5, name="last")(L.Dense(3)(d)))
    return {"shared_call": shared_call, "second_output": second_output,
            "integer_input": integer_input, "custom": custom,
            "output_dropout": output_dropout}


def test_layers_left_out_never_change_what_the_model_computes():
    keras.utils.set_random_seed(7)
    rng = np.random.default_rng(7)
    for name, model in _small_models().items():
        xs = [rng.uniform(0, 255, (2,) + tuple(t.shape[1:])).astype(t.dtype)
              for t in model.inputs]
        xs = xs if len(xs) > 1 else xs[0]
        folded = fold_batch_norm(model)
        expected = keras.ops.convert_to_numpy(model(xs, training=False))
        got = keras.ops.convert_to_numpy(folded(xs, training=False))
        np.testing.assert_allclose(got, expected, rtol=1e-6, err_msg=name)
        assert folded.output_names == model.output_names, name
    # Where it is safe, left out.
    x = keras.Input((4,))
    plain = keras.Model(x, keras.layers.Dense(2)(keras.layers.Dropout(0.5)(
        keras.layers.Dense(3)(x))))
    assert "Dropout" not in [type(layer).__name__ for layer in fold_batch_norm(plain).layers]


@pytest.fixture(scope="module")
def augmented_classifier():
    """A classifier as `keras-xception fine-tune` saves it (augmentation in
    front), and keras.io's layout with the augmentation layers called one by
    one, a Sequential head and dropout."""
    from keras_xception.transfer import build_classifier

    keras.utils.set_random_seed(5)
    ours = build_classifier(3, image_size=71, weights=None)
    randomize_batch_norm(ours.get_layer("xception"))
    inputs = keras.Input((71, 71, 3))
    x = keras.layers.RandomFlip("horizontal")(inputs)
    x = keras.layers.RandomHue(0.1, value_range=(0, 255))(x)
    x = keras.layers.RandomSharpness(0.2)(x)
    x = keras.layers.Rescaling(1 / 127.5, offset=-1)(x)
    x = ours.get_layer("xception")(x, training=False)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dropout(0.2)(x)
    head = keras.Sequential([keras.layers.Dense(16, activation="relu"),
                             keras.layers.Dense(4)], name="head")
    kerasio = keras.Model(inputs, head(x))
    return {"build_classifier": ours, "keras.io": kerasio}


@pytest.mark.slow
@pytest.mark.parametrize("runtime, layout", [
    ("keras", "build_classifier"), ("keras", "keras.io"),
    ("openvino", "build_classifier"), ("openvino", "keras.io"),
    # A conversion to ONNX costs ~20 s here: the layout whose random
    # operations (RandomHue, RandomSharpness) ONNX cannot convert at all.
    ("onnxruntime", "keras.io"),
])
def test_a_model_with_augmentation_runs_on_every_runtime(augmented_classifier, layout,
                                                         runtime):
    """Augmentation left in a fine-tuned model does nothing at inference:
    every runtime gives what Keras's own `predict` gives."""
    model = augmented_classifier[layout]
    x = np.random.default_rng(6).uniform(0, 255, (2, 71, 71, 3)).astype("float32")
    expected = model.predict(x, verbose=0)
    assert expected.std() > 1e-3  # outputs that tell wrong from right
    fast = optimize_for_inference(model, "float32", runtime=runtime)
    kinds = {type(layer).__name__ for layer in fast.layers}
    assert not kinds & {"RandomFlip", "RandomHue", "RandomSharpness", "Dropout"}
    assert "augmentation" not in [layer.name for layer in fast.layers]
    got = fast.predict(x)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


def runtime_info_in_a_new_process(setting):
    env = {k: v for k, v in os.environ.items() if k != "TF_ENABLE_ONEDNN_OPTS"}
    if setting is not None:
        env["TF_ENABLE_ONEDNN_OPTS"] = setting
    env.update(KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="2")
    code = ("import json; from keras_xception import tfenv; tfenv.install(); "
            "from keras_xception.inference import runtime_info; "
            "print(json.dumps(runtime_info()))")
    done = subprocess.run([sys.executable, "-c", code], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.mark.slow
@pytest.mark.parametrize("setting, expected", [("0", False), ("1", True)])
def test_runtime_info_reports_the_forced_onednn_state(setting, expected):
    info = runtime_info_in_a_new_process(setting)
    assert info["backend"] == "tensorflow"
    assert info["onednn"] is expected
    assert info["onednn_env"] == setting


@pytest.mark.slow
def test_runtime_info_follows_tensorflows_cpu_rule_when_unset(onednn_by_default):
    info = runtime_info_in_a_new_process(None)
    assert info["onednn_env"] is None
    assert info["onednn"] is onednn_by_default


@pytest.mark.slow
def test_a_sequential_with_an_xception_base_runs_as_keras_predicts_it():
    """A `keras.Sequential` (a form a user saves and `--model` takes) is
    optimized as the graph of its layers, not refused."""
    keras.utils.set_random_seed(7)
    base = Xception(include_top=False, weights=None, pooling="avg", input_shape=(71, 71, 3))
    randomize_batch_norm(base)
    model = keras.Sequential([keras.Input((71, 71, 3)),
                              keras.layers.Rescaling(1 / 127.5, offset=-1), base,
                              keras.layers.Dense(3)])
    x = np.random.default_rng(8).uniform(0, 255, (2, 71, 71, 3)).astype("float32")
    expected = model.predict(x, verbose=0)
    assert expected.std() > 1e-3  # outputs that tell wrong from right
    got = optimize_for_inference(model, "float32", runtime="keras").predict(x)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())
