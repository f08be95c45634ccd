"""`count_flops`: Xception's multiply-adds, layer by layer."""

import keras
import pytest

from keras_xception import Xception, count_flops, optimize_for_inference
from keras_xception.errors import ConfigError

# 8.36 GMAC (16.71 GFLOP); timm lists 8.4 GMAC for Xception at 299x299.
XCEPTION_MACS = 8_357_403_496


@pytest.fixture(scope="module")
def model():
    return Xception(weights=None)


def test_xception_count(model):
    count = count_flops(model)
    assert count.macs == XCEPTION_MACS
    assert count.flops == 2 * XCEPTION_MACS
    assert round(count.flops / 1e9, 2) == 16.71


def test_breakdown_per_layer(model):
    count = count_flops(model)
    layers = {layer.name: layer for layer in count.layers}
    # 149x149 positions, 3x3x3 window, 32 filters.
    assert layers["block1_conv1"].macs == 149 * 149 * 27 * 32
    # 19x19 positions: 3x3 depthwise on 728 channels, then 728 -> 728.
    assert layers["block5_sepconv1"].macs == 19 * 19 * (9 * 728 + 728 * 728)
    assert layers["predictions"].macs == 2048 * 1000
    assert sum(count.by_kind().values()) == count.macs
    assert "block5_sepconv1_bn" not in layers  # BatchNormalization not counted
    assert "block5_sepconv1" in count.table()


def test_same_count_for_keras_applications_and_optimized_model(model):
    assert count_flops(keras.applications.Xception(weights=None)).macs == XCEPTION_MACS
    assert count_flops(optimize_for_inference(model)).macs == XCEPTION_MACS


def test_free_input_size_needs_input_shape():
    features = Xception(weights=None, include_top=False)
    with pytest.raises(ConfigError, match="input_shape"):
        count_flops(features)
    assert count_flops(features, input_shape=(299, 299, 3)).macs == (
        XCEPTION_MACS - 2048 * 1000
    )
