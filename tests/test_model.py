"""The builder: architecture, arguments, weights files, saving, mixed precision.

These tests also run under `KERAS_BACKEND=jax` (see test_jax_backend.py).
"""

import contextlib

import numpy as np
import pytest

import keras

from keras_xception import Xception, architecture, preprocess_input
from keras_xception.preprocessing import load_image
from tests import realweights

TOP_PARAMS = 22_910_480
NOTOP_PARAMS = 20_861_480


@pytest.fixture(scope="module")
def reference():
    """`keras.applications.Xception` with a top, random weights."""
    return keras.applications.Xception(weights=None)


@pytest.fixture(scope="module")
def model():
    return Xception(weights=None)


@contextlib.contextmanager
def image_data_format(value):
    previous = keras.config.image_data_format()
    keras.config.set_image_data_format(value)
    try:
        yield
    finally:
        keras.config.set_image_data_format(previous)


@pytest.fixture
def channels_first():
    with image_data_format("channels_first"):
        yield


@pytest.fixture
def policy():
    """Restores the global dtype policy after a test changes it."""
    previous = keras.config.dtype_policy()
    yield keras.config.set_dtype_policy
    keras.config.set_dtype_policy(previous)


def _photos(paths, size=(299, 299)):
    return preprocess_input(np.stack([load_image(p, size) for p in paths]))


def _top_arrays(seed=0, classes=1000):
    rng = np.random.default_rng(seed)
    kernel = rng.normal(0, 0.02, (architecture.FEATURES, classes)).astype("float32")
    bias = rng.normal(0, 0.1, (classes,)).astype("float32")
    return [kernel, bias]


# --- architecture -----------------------------------------------------------


def test_parameter_counts_match_reference_and_architecture_table(model, reference):
    assert model.count_params() == TOP_PARAMS == reference.count_params()
    assert architecture.count_params(True) == TOP_PARAMS
    notop = Xception(include_top=False, weights=None)
    assert notop.count_params() == NOTOP_PARAMS == architecture.count_params(False)


def test_every_keras_named_layer_exists_in_the_same_order(model, reference):
    ours = [(layer.name, type(layer).__name__) for layer in model.layers]
    theirs = [(layer.name, type(layer).__name__) for layer in reference.layers]
    assert [kind for _, kind in ours] == [kind for _, kind in theirs]
    auto = ("input_layer", "conv2d", "batch_normalization", "add")
    for (name, _), (ref_name, _) in zip(ours, theirs):
        if not ref_name.startswith(auto):
            assert name == ref_name
    names = {name for name, _ in ours}
    for i in (2, 3, 4, 13):
        assert {f"block{i}_residual_conv", f"block{i}_residual_bn"} <= names


def test_weighted_layers_match_keras_applications(model, reference):
    """Same weighted layers, weight shapes and order as Keras's Xception.

    Files are loaded by position (official Keras 2 files) or per layer, so
    the order of the weighted layers, and of the weights in each, is part of
    the contract; the architecture table must list them in that order too.
    """
    ours = [layer for layer in model.layers if layer.weights]
    theirs = [layer for layer in reference.layers if layer.weights]
    assert [type(layer).__name__ for layer in ours] == [
        type(layer).__name__ for layer in theirs
    ]
    for mine, keras_layer in zip(ours, theirs):
        assert [tuple(w.shape) for w in mine.weights] == [
            tuple(w.shape) for w in keras_layer.weights
        ], mine.name
        if not keras_layer.name.startswith(("conv2d", "batch_normalization")):
            assert mine.name == keras_layer.name
    layout = architecture.weight_layout(True)
    assert [entry.name for entry in layout] == [layer.name for layer in ours]
    assert [entry.shapes for entry in layout] == [
        tuple(tuple(w.shape) for w in layer.weights) for layer in theirs
    ]


def _layer_configs(model):
    """Each weighted layer's config but its name, in order."""
    return [{k: v for k, v in layer.get_config().items() if k != "name"}
            for layer in model.layers if layer.weights]


@pytest.mark.slow  # Backend-neutral: under TensorFlow only, not in the JAX rerun.
def test_a_model_built_for_a_weights_file_has_keras_applications_config(
        tmp_path, reference):
    """The layers of a model whose weights are loaded from a file are built
    without random values, then given back their initializers: every layer
    config, initializers included, is keras.applications'."""
    path = tmp_path / "top.weights.h5"
    reference.save_weights(path)
    loaded = Xception(weights=path)
    assert _layer_configs(loaded) == _layer_configs(reference)
    for mine, theirs in zip(loaded.weights, reference.weights):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(mine),
                                      keras.ops.convert_to_numpy(theirs))


def test_layer_names_do_not_depend_on_what_was_built_before():
    first = [layer.name for layer in Xception(include_top=False, weights=None).layers]
    second = [layer.name for layer in Xception(include_top=False, weights=None).layers]
    assert first[1:] == second[1:]  # all but the auto-named input layer


# Not `numerics`: both models run the same operations on the same kernels
# (their outputs are bit-equal), so the oneDNN rerun would compare nothing new.
def test_same_weights_give_the_same_outputs_as_keras(model, reference):
    rng = np.random.default_rng(0)
    values = []
    for w in reference.weights:
        v = rng.normal(0, 0.05, w.shape)
        if "variance" in w.path:
            v = np.abs(v) + 1.0
        values.append(v.astype("float32"))
    reference.set_weights(values)
    model.set_weights(values)
    x = rng.uniform(-1, 1, (2, 299, 299, 3)).astype("float32")
    # predict (compiled once) rather than an eager call: under JAX an eager
    # call compiles each of the model's operations on its own, ~4x the time.
    np.testing.assert_allclose(
        model.predict(x, verbose=0), reference.predict(x, verbose=0), atol=1e-5)


# --- shapes -----------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(
    "input_shape, pooling, expected",
    [
        ((71, 71, 3), None, (3, 3, 2048)),
        ((71, 71, 3), "avg", (2048,)),
        ((96, 128, 1), "max", (2048,)),
        ((None, None, 3), None, (None, None, 2048)),
        ((None, None, 1), "avg", (2048,)),
        ((150, 150, 4), None, (5, 5, 2048)),
    ],
)
def test_feature_shapes(input_shape, pooling, expected):
    m = Xception(include_top=False, weights=None, input_shape=input_shape, pooling=pooling)
    assert m.output_shape == (None, *expected)
    concrete = tuple(d or 80 for d in input_shape)
    out = m.predict(np.zeros((2, *concrete), "float32"), verbose=0)
    assert out.shape[0] == 2 and out.shape[-1] == 2048


def test_default_no_top_input_is_free_size():
    m = Xception(include_top=False, weights=None)
    assert m.input_shape == (None, None, None, 3)


def test_top_with_custom_classes_and_logits():
    m = Xception(
        weights=None, input_shape=(71, 71, 1), classes=7, classifier_activation=None
    )
    assert m.output_shape == (None, 7)
    out = m.predict(np.ones((3, 71, 71, 1), "float32"), verbose=0)
    assert out.shape == (3, 7)
    assert not np.allclose(out.sum(axis=1), 1.0)  # logits, not probabilities


def test_channels_first(channels_first):
    m = Xception(include_top=False, weights=None, input_shape=(3, 71, 71), pooling=None)
    assert m.output_shape == (None, 2048, 3, 3)
    t = Xception(weights=None, input_shape=(1, 72, 80), classes=4)
    assert t.input_shape == (None, 1, 72, 80)
    assert Xception(include_top=False, weights=None).input_shape == (None, 3, None, None)


@pytest.mark.slow
@pytest.mark.numerics
def test_channels_first_computes_what_channels_last_does(imagenet_notop_arrays):
    """A channels_first model runs and equals the channels_last one, or the
    backend refuses NCHW with an error that names the format it needs.

    TensorFlow's own CPU convolutions are NHWC-only; with its oneDNN
    kernels on (its default on CPUs with AVX-512 VNNI or BF16, or AMX), on
    a GPU or under JAX, NCHW runs. Keras kernels
    have the same layout in both data formats, so the same weights are set;
    the input and output are transposed. Different kernels sum in a
    different order: float32 rounding through 36 convolutions stays far
    below 1e-4 of the largest feature.
    """
    kwargs = dict(include_top=False, weights=None, pooling=None)
    last = Xception(input_shape=(72, 80, 3), **kwargs)
    with image_data_format("channels_first"):
        first = Xception(input_shape=(3, 72, 80), **kwargs)
    for entry, values in zip(architecture.weight_layout(False), imagenet_notop_arrays):
        last.get_layer(entry.name).set_weights(values)
        first.get_layer(entry.name).set_weights(values)
    x = _photos(realweights.photos()[:2], size=(72, 80))
    expected = last.predict(x, verbose=0)
    assert expected.shape == (2, 3, 3, 2048) and expected.std() > 0.1
    try:
        got = first.predict(np.transpose(x, (0, 3, 1, 2)), verbose=0)
    except Exception as err:  # noqa: BLE001 - the backend's own error class
        assert "NHWC" in str(err), err
        assert keras.backend.backend() == "tensorflow"
        return
    assert got.shape == (2, 2048, 3, 3)
    np.testing.assert_allclose(
        np.transpose(got, (0, 2, 3, 1)), expected,
        rtol=1e-4, atol=1e-4 * np.abs(expected).max(),
    )


def test_input_tensor_is_honoured():
    inputs = keras.Input((80, 80, 3), name="my_images")
    m = Xception(include_top=False, weights=None, input_tensor=inputs, pooling="avg")
    assert m.inputs[0] is inputs
    assert m.output_shape == (None, 2048)


# --- bad arguments ----------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        (dict(pooling="median", include_top=False), "pooling='median'"),
        (dict(weights="no/such/file.h5"), "weights='no/such/file.h5'"),
        (dict(weights="imagenet", classes=10), "classes=10"),
        (dict(weights=None, classes=0), "classes=0"),
        (dict(weights="imagenet", input_shape=(224, 224, 3)), "(299, 299, 3)"),
        (dict(weights="imagenet", include_top=False, input_shape=(150, 150, 1)), "3 channels"),
        (dict(weights=None, include_top=False, input_shape=(70, 100, 3)), "at least 71x71"),
        (dict(weights=None, include_top=False, input_shape=(100, 100)), "three integers"),
        (dict(weights=None, include_top=False, input_shape=(71.5, 100, 3)), "71.5"),
        (dict(weights=None, input_shape=(None, None, 3)), "static"),
        (dict(weights="imagenet", classifier_activation="relu"), "classifier_activation"),
        (dict(weights=None, classifier_activation="no_such_fn"), "no_such_fn"),
    ],
)
def test_bad_arguments_raise_value_error_naming_the_value(kwargs, fragment, keras_home):
    # keras_home makes any download attempt fail: every check runs first.
    with pytest.raises(ValueError) as info:
        Xception(**kwargs)
    assert fragment in str(info.value)


def test_classes_is_ignored_without_top_as_in_keras():
    m = Xception(include_top=False, weights=None, input_shape=(71, 71, 3), classes=None)
    assert m.output_shape == (None, 3, 3, 2048)


def test_any_activation_is_allowed_without_pretrained_weights():
    m = Xception(weights=None, input_shape=(71, 71, 3), classes=3, classifier_activation="sigmoid")
    out = m.predict(np.zeros((1, 71, 71, 3), "float32"), verbose=0)
    assert np.all((out > 0) & (out < 1))


# --- weights files ----------------------------------------------------------


@pytest.fixture(scope="module")
def real_photos():
    return _photos(realweights.photos()[:3])


@pytest.fixture(scope="module")
def reference_features(imagenet_notop_arrays, real_photos):
    ref = keras.applications.Xception(weights=None, include_top=False, pooling="avg")
    for layer, values in zip(
        [layer for layer in ref.layers if layer.weights], imagenet_notop_arrays
    ):
        layer.set_weights(values)
    return keras.ops.convert_to_numpy(ref(real_photos))


@pytest.mark.parametrize("kind", ["legacy", "keras3"])  # Same kernels: not `numerics`.
def test_real_weights_load_and_match_keras_applications(
    kind, imagenet_notop_files, real_photos, reference_features
):
    m = Xception(include_top=False, weights=str(imagenet_notop_files[kind]), pooling="avg")
    features = keras.ops.convert_to_numpy(m(real_photos))
    assert features.shape == (3, 2048)
    assert features.std() > 0.1  # real features, not zeros
    np.testing.assert_allclose(features, reference_features, atol=1e-5)


@pytest.mark.slow
def test_weights_file_saved_from_this_package_round_trips(tmp_path, imagenet_notop_files, real_photos):
    m = Xception(include_top=False, weights=imagenet_notop_files["legacy"], pooling="max")
    path = tmp_path / "mine.weights.h5"
    m.save_weights(path)
    again = Xception(include_top=False, weights=path, pooling="max")
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(again(real_photos)),
        keras.ops.convert_to_numpy(m(real_photos)),
    )


@pytest.mark.slow
def test_with_top_file_into_no_top_model_says_so(tmp_path, imagenet_notop_arrays):
    path = tmp_path / "xception_with_top.h5"
    realweights.write_legacy_h5(path, imagenet_notop_arrays + [_top_arrays()], include_top=True)
    with pytest.raises(ValueError, match="top"):
        Xception(include_top=False, weights=path)
    # ... and the same file loads into a model with a top.
    m = Xception(include_top=True, weights=path)
    np.testing.assert_array_equal(m.get_layer("predictions").get_weights()[1], _top_arrays()[1])


def test_no_top_file_into_top_model_says_so(imagenet_notop_files):
    with pytest.raises(ValueError, match="top"):
        Xception(include_top=True, weights=imagenet_notop_files["legacy"])


def test_keras_model_file_loads_as_keras_load_weights_reads_it(tmp_path):
    ref = keras.applications.Xception(weights=None, include_top=False, input_shape=(71, 71, 3))
    path = tmp_path / "theirs.keras"
    ref.save(path)
    m = Xception(include_top=False, weights=path, input_shape=(71, 71, 3))
    x = np.random.default_rng(0).uniform(-1, 1, (1, 71, 71, 3)).astype("float32")
    np.testing.assert_allclose(
        m.predict(x, verbose=0), ref.predict(x, verbose=0), rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="top"):
        Xception(include_top=True, weights=path)


def test_another_architectures_file_is_refused(tmp_path):
    other = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4), keras.layers.Dense(2)])
    path = tmp_path / "other.weights.h5"
    other.save_weights(path)
    with pytest.raises(ValueError) as info:
        Xception(include_top=False, weights=path)
    assert "xception" in str(info.value).lower()


# --- saving and mixed precision -----------------------------------------------


@pytest.mark.slow
def test_keras_file_reloads_without_custom_objects(tmp_path):
    m = Xception(weights=None, input_shape=(71, 71, 3), classes=5)
    x = np.random.default_rng(0).uniform(-1, 1, (2, 71, 71, 3)).astype("float32")
    path = tmp_path / "model.keras"
    m.save(path)
    again = keras.saving.load_model(path)
    assert [layer.name for layer in again.layers] == [layer.name for layer in m.layers]
    np.testing.assert_allclose(
        again.predict(x, verbose=0), m.predict(x, verbose=0), atol=1e-6
    )


@pytest.mark.numerics
@pytest.mark.parametrize("name", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_probabilities_are_float32_and_sum_to_one(name, policy):
    policy(name)
    m = Xception(weights=None, input_shape=(71, 71, 3), classes=10)
    assert m.get_layer("block1_conv1").compute_dtype == name.split("_")[1]
    out = m.predict(np.random.default_rng(0).uniform(-1, 1, (2, 71, 71, 3)).astype("float32"),
                    verbose=0)
    assert keras.backend.standardize_dtype(out.dtype) == "float32"
    np.testing.assert_allclose(out.sum(axis=1), 1.0, atol=1e-5)


def test_plain_16_bit_policy_keeps_the_classifier_in_it_as_in_keras(policy):
    policy("float16")
    m = Xception(weights=None, input_shape=(71, 71, 3), classes=10)
    assert keras.backend.standardize_dtype(m.get_layer("predictions").kernel.dtype) == "float16"
