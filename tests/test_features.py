"""`feature_extractor`: the multi-scale feature maps, their shapes and strides."""

import keras
import numpy as np
import pytest

from keras_xception import Xception, build_classifier, feature_extractor
from keras_xception.errors import ConfigError
from keras_xception.features import ENDPOINTS


@pytest.fixture(scope="module")
def free_size_base():
    return Xception(include_top=False, weights=None, input_shape=(None, None, 3))


def expected_shapes(size):
    """Channels-last shape of each endpoint for a `size` x `size` input."""
    side = (size - 1) // 2 - 2  # two "valid" 3x3 convolutions, the first strided
    shapes = {}
    for name, (_, channels, _) in ENDPOINTS.items():
        shapes[name] = (side, side, channels)
        side = -(-side // 2)  # each later endpoint halves, rounding up
    return shapes


def test_endpoint_table_matches_documented_channels_and_strides():
    assert {name: (layer, ch, s) for name, (layer, ch, s) in ENDPOINTS.items()} == {
        "stride2": ("block1_conv2_act", 64, 2),
        "stride4": ("block2_add", 128, 4),
        "stride8": ("block3_add", 256, 8),
        "stride16": ("block12_add", 728, 16),
        "stride32": ("block14_sepconv2_act", 2048, 32),
    }


@pytest.mark.parametrize("size", [224, 256])
def test_shapes_and_strides_on_a_free_size_input(free_size_base, size):
    extractor = feature_extractor(free_size_base)
    outputs = extractor.predict(np.zeros((2, size, size, 3), "float32"), verbose=0)
    assert list(outputs) == list(ENDPOINTS)
    shapes = {name: value.shape[1:] for name, value in outputs.items()}
    assert shapes == expected_shapes(size)
    for name, (_, _, stride) in ENDPOINTS.items():
        # The nominal stride, within the few pixels the valid stem removes.
        assert abs(shapes[name][0] * stride - size) <= stride + 6, (name, shapes[name])


def test_fixed_size_model_and_symbolic_shapes():
    base = Xception(include_top=False, weights=None, input_shape=(256, 256, 3))
    extractor = feature_extractor(base, endpoints=["stride8", "stride32"])
    assert {k: tuple(v.shape) for k, v in extractor.output.items()} == {
        "stride8": (None, 32, 32, 256),
        "stride32": (None, 8, 8, 2048),
    }
    free = feature_extractor(
        Xception(include_top=False, weights=None, input_shape=(None, None, 3)),
        endpoints="stride16",
    )
    assert tuple(free.output["stride16"].shape) == (None, None, None, 728)


@pytest.mark.slow
def test_shares_weights_with_the_model_it_is_given():
    base = Xception(include_top=False, weights=None, input_shape=(None, None, 3))
    extractor = feature_extractor(base, endpoints=["stride32", "block13_sepconv2_bn"])
    assert extractor.output["block13_sepconv2_bn"].shape[-1] == 1024
    x = np.random.default_rng(0).uniform(-1, 1, (1, 96, 96, 3)).astype("float32")
    before = extractor.predict(x, verbose=0)["stride32"]
    np.testing.assert_allclose(before, base.predict(x, verbose=0), atol=1e-5)
    # A change to the base after the extractor was built shows in its output.
    layer = base.get_layer("block14_sepconv2_bn")
    gamma, beta, mean, variance = layer.get_weights()
    layer.set_weights([gamma, beta + 1.0, mean, variance])
    after = extractor.predict(x, verbose=0)["stride32"]
    np.testing.assert_allclose(after, base.predict(x, verbose=0), atol=1e-5)
    assert np.abs(after - before).max() > 0.5


def test_takes_the_base_of_a_classifier():
    classifier = build_classifier(3, image_size=96, weights=None)
    extractor = feature_extractor(classifier)
    assert extractor.get_layer("block1_conv1") is classifier.get_layer(
        "xception"
    ).get_layer("block1_conv1")
    assert tuple(extractor.output["stride4"].shape) == (None, 23, 23, 128)


def test_builds_a_base_when_given_none():
    extractor = feature_extractor(
        None, weights=None, input_shape=(128, 128, 3), endpoints="stride2"
    )
    assert isinstance(extractor, keras.Model)
    assert tuple(extractor.output["stride2"].shape) == (None, 61, 61, 64)


def test_unknown_endpoint_lists_the_valid_names(free_size_base):
    with pytest.raises(
        ConfigError, match="Unknown endpoint 'stride64'.*stride2, stride4"
    ):
        feature_extractor(free_size_base, endpoints=["stride64"])
