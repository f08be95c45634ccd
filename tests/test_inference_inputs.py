"""The fast `predict`'s input contract, on every runtime: as Keras's `predict`.

A NaN or an infinity in an image gives NaN in that image's outputs only; an
empty batch, a bad `batch_size` or a wrong image size is one short
`ConfigError`.
"""

import keras
import numpy as np
import pytest

from keras_xception import Xception, optimize_for_inference
from keras_xception.errors import ConfigError
from keras_xception.inference import inputs

SIZE = 71
RUNTIMES = ["keras", "openvino", "onnxruntime"]


@pytest.fixture(scope="module")
def small():
    return Xception(weights=None, include_top=False, pooling="avg",
                    input_shape=(SIZE, SIZE, 3))


@pytest.fixture(scope="module")
def fast(small):
    return optimize_for_inference(small, "float32", runtime="keras")


@pytest.fixture(scope="module")
def poisoned():
    """Three images: clean, one NaN pixel value, one infinite pixel value."""
    x = np.random.default_rng(7).uniform(-1, 1, (3, SIZE, SIZE, 3)).astype("float32")
    x[1, 30, 40, 0] = np.nan
    x[2, 5, 60, 2] = np.inf
    return x


@pytest.fixture(scope="module")
def keras_answer(small, poisoned):
    """What Keras's own predict gives for the poisoned batch."""
    expected = small.predict(poisoned, verbose=0)
    # The contract being matched: non-finite in, NaN out, for that image only.
    assert np.isfinite(expected[0]).all()
    assert np.isnan(expected[1:]).all()
    return expected


@pytest.mark.slow
@pytest.mark.parametrize("runtime", RUNTIMES)
def test_a_non_finite_image_gives_nan_on_every_runtime(runtime, small, poisoned,
                                                       keras_answer):
    fast = optimize_for_inference(small, "float32", runtime=runtime)
    got = fast.predict(poisoned)
    assert got.shape == keras_answer.shape and got.dtype == np.float32
    assert np.isnan(got[1:]).all()
    # The clean image keeps its own answer, as if it were alone.
    alone = fast.predict(poisoned[:1])
    np.testing.assert_allclose(got[:1], alone, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(got[0], keras_answer[0], rtol=1e-4,
                               atol=1e-4 * np.abs(keras_answer[0]).max())
    # Split across batches, each poisoned image poisons only itself.
    np.testing.assert_array_equal(np.isnan(fast.predict(poisoned, batch_size=2)),
                                  np.isnan(got))


def test_a_non_finite_image_gives_nan_through_keras_predict_too(fast, poisoned,
                                                                keras_answer):
    """With a progress bar the fast model runs Keras's predict: same contract."""
    got = fast.predict(poisoned, verbose=1)
    assert np.isnan(got[1:]).all() and np.isfinite(got[0]).all()


def test_a_classifier_gives_nan_probabilities_for_a_non_finite_image(poisoned):
    model = Xception(weights=None, input_shape=(SIZE, SIZE, 3), classes=3)
    got = optimize_for_inference(model, "float32", runtime="keras").predict(poisoned)
    assert got.shape == (3, 3)
    assert np.isnan(got[1:]).all()
    np.testing.assert_allclose(got[0].sum(), 1.0, rtol=1e-5)


def test_finite_rows_is_exact():
    x = np.zeros((5, 4, 4, 3), dtype=np.float32)
    x[1, 0, 0, 0] = np.nan
    x[2, 3, 3, 2] = -np.inf
    x[3] = np.finfo(np.float32).max  # finite values whose sum overflows
    np.testing.assert_array_equal(inputs.finite_rows(x), [True, False, False, True, True])
    tensor = keras.ops.convert_to_tensor(x)
    np.testing.assert_array_equal(inputs.finite_rows(tensor),
                                  [True, False, False, True, True])


@pytest.mark.filterwarnings("ignore:Your input ran out of data")
def test_an_empty_batch_is_one_line_on_both_paths(small, fast):
    """Keras's own predict fails on it with an UnboundLocalError."""
    empty = np.zeros((0, SIZE, SIZE, 3), dtype=np.float32)
    with pytest.raises(UnboundLocalError):  # if Keras fixes it, match Keras
        small.predict(empty, verbose=0)
    for verbose in (0, 1):
        with pytest.raises(ConfigError) as caught:
            fast.predict(empty, verbose=verbose)
        message = str(caught.value)
        assert "\n" not in message and "no image" in message
        assert f"Received: shape=(0, {SIZE}, {SIZE}, 3)" in message


@pytest.mark.parametrize("batch_size", [0, -1, 2.5, "8", True])
def test_a_bad_batch_size_is_one_line(fast, poisoned, batch_size):
    with pytest.raises(ConfigError) as caught:
        fast.predict(poisoned, batch_size=batch_size)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("`batch_size` must be a positive integer")
    assert f"Received: batch_size={batch_size!r}" in message


def test_a_numpy_batch_size_is_accepted(fast, poisoned):
    assert fast.predict(poisoned[:1], batch_size=np.int64(1)).shape == (1, 2048)


@pytest.mark.parametrize("shape", [(2, 80, 80, 3), (2, SIZE, SIZE, 1)])
def test_a_wrong_image_size_is_one_short_error(fast, shape):
    with pytest.raises(ConfigError) as caught:
        fast.predict(np.zeros(shape, dtype=np.float32))
    message = str(caught.value)
    assert "\n" not in message and len(message) < 200
    assert f"(None, {SIZE}, {SIZE}, 3)" in message
    assert f"Received: shape={shape}" in message
