"""preprocess_input, decode_predictions and load_image.

These tests also run under `KERAS_BACKEND=jax` (see test_jax_backend.py).
"""

import json

import numpy as np
import pytest
from PIL import Image

import keras

from keras_xception import decode_predictions, load_image, preprocess_input
from keras_xception.errors import ImageError
from keras_xception.preprocessing import imagenet_classes

# --- preprocess_input ---------------------------------------------------------


@pytest.mark.parametrize("dtype", ["uint8", "int32", "int64", "float16", "float32", "float64"])
def test_scales_to_minus_one_one_and_never_mutates(dtype):
    x = np.array([[0, 127.5 if "float" in dtype else 127, 255]], dtype=dtype)
    before = x.copy()
    out = preprocess_input(x)
    np.testing.assert_array_equal(x, before)
    assert out is not x
    expected_dtype = dtype if "float" in dtype else "float32"
    assert out.dtype == expected_dtype
    np.testing.assert_allclose(out[0, [0, 2]], [-1.0, 1.0])


def test_keras_would_have_changed_the_callers_array():
    """The complaint this fixes (keras-team/keras#8741): Keras rescales in place."""
    x = np.full((1, 4, 4, 3), 255.0, dtype="float32")
    keras.applications.xception.preprocess_input(x)
    assert x.max() == 1.0  # Keras mutated it
    y = np.full((1, 4, 4, 3), 255.0, dtype="float32")
    preprocess_input(y)
    assert y.max() == 255.0


def test_matches_keras_values_on_a_batch_and_a_single_image():
    rng = np.random.default_rng(0)
    batch = rng.integers(0, 256, (2, 5, 5, 3)).astype("float32")
    expected = keras.applications.xception.preprocess_input(batch.copy())
    np.testing.assert_allclose(preprocess_input(batch), expected, atol=1e-6)
    np.testing.assert_allclose(preprocess_input(batch[0]), expected[0], atol=1e-6)


def test_backend_tensors_and_lists():
    t = keras.ops.convert_to_tensor(np.array([[0, 255]], dtype="uint8"))
    out = preprocess_input(t)
    assert keras.ops.is_tensor(out)
    assert keras.backend.standardize_dtype(out.dtype) == "float32"
    np.testing.assert_allclose(keras.ops.convert_to_numpy(out), [[-1.0, 1.0]])
    np.testing.assert_allclose(preprocess_input([0, 255]), [-1.0, 1.0])


def test_inside_a_model_on_symbolic_tensors():
    inputs = keras.Input((4, 4, 3))
    model = keras.Model(inputs, keras.layers.Lambda(preprocess_input)(inputs))
    out = model.predict(np.full((1, 4, 4, 3), 255.0, "float32"), verbose=0)
    np.testing.assert_allclose(out, 1.0, atol=1e-6)


def test_bad_data_format_names_the_value():
    with pytest.raises(ValueError, match="data_format='NHWC'"):
        preprocess_input(np.zeros((1, 2, 2, 3)), data_format="NHWC")


# --- decode_predictions -------------------------------------------------------


def test_class_index_is_bundled_and_matches_keras_names():
    classes = imagenet_classes()
    assert len(classes) == 1000
    assert classes[386] == ("n02504458", "African_elephant")
    assert classes[0] == ("n01440764", "tench")
    assert classes[999] == ("n15075141", "toilet_tissue")
    assert len({synset for synset, _ in classes}) == 1000


def test_decodes_highest_first_with_synset_name_and_score():
    preds = np.full((2, 1000), 1e-4, dtype="float32")
    preds[0, 386], preds[0, 101], preds[0, 3] = 0.9, 0.05, 0.03
    preds[1, 0] = 0.7
    out = decode_predictions(preds, top=3)
    assert [row[:2] for row in out[0]] == [
        ("n02504458", "African_elephant"),
        ("n01871265", "tusker"),
        ("n01491361", "tiger_shark"),
    ]
    assert [type(row[2]) for row in out[0]] == [float] * 3
    assert out[0][0][2] == pytest.approx(0.9)
    assert out[1][0][:2] == ("n01440764", "tench")
    assert len(decode_predictions(preds)[0]) == 5


def test_decode_works_offline(keras_home, monkeypatch):
    # Keras downloads the class index on first use; this package never does.
    import urllib.request

    def no_network(*args, **kwargs):
        raise AssertionError("decode_predictions touched the network")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    preds = np.eye(1000, dtype="float32")[[386]]
    assert decode_predictions(preds, top=1)[0][0][1] == "African_elephant"


def test_decode_accepts_backend_tensors():
    preds = keras.ops.one_hot(keras.ops.convert_to_tensor([386]), 1000)
    assert decode_predictions(preds, top=1)[0][0][1] == "African_elephant"


@pytest.mark.parametrize("shape", [(1000,), (2, 10), (2, 1000, 1), (1, 1001)])
def test_decode_rejects_other_shapes_naming_the_shape(shape):
    with pytest.raises(ValueError) as info:
        decode_predictions(np.zeros(shape, "float32"))
    assert str(shape) in str(info.value)


@pytest.mark.parametrize("top", [0, 1001, 2.5, "5"])
def test_decode_rejects_bad_top(top):
    with pytest.raises(ValueError, match="top"):
        decode_predictions(np.zeros((1, 1000), "float32"), top=top)


def test_bundled_index_has_keras_format_one_entry_per_class():
    import pathlib

    root = pathlib.Path(__file__).resolve().parents[1]
    bundled = root / "keras_xception" / "data" / "imagenet_class_index.json"
    index = json.loads(bundled.read_text())
    assert list(index) == [str(i) for i in range(1000)]
    assert all(len(v) == 2 and v[0].startswith("n") for v in index.values())


# --- load_image ---------------------------------------------------------------


def _save(tmp_path, name, image, **kwargs):
    path = tmp_path / name
    image.save(path, **kwargs)
    return path


def test_rgb_jpeg_is_float32_rgb_resized(tmp_path):
    path = _save(tmp_path, "a.jpg", Image.new("RGB", (640, 480), (200, 30, 10)))
    x = load_image(path)
    assert x.shape == (299, 299, 3) and x.dtype == np.float32
    np.testing.assert_allclose(x.mean(axis=(0, 1)), [200, 30, 10], atol=3)
    assert load_image(path, target_size=None).shape == (480, 640, 3)
    assert load_image(path, target_size=(100, 50)).shape == (100, 50, 3)


def test_grayscale_palette_cmyk_and_16_bit(tmp_path):
    gray = load_image(_save(tmp_path, "g.png", Image.new("L", (10, 10), 77)), None)
    np.testing.assert_array_equal(gray, np.full((10, 10, 3), 77.0))
    palette = Image.new("P", (10, 10))
    palette.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    palette.paste(1, (0, 0, 10, 10))
    np.testing.assert_array_equal(
        load_image(_save(tmp_path, "p.png", palette), None)[0, 0], [10, 200, 30]
    )
    cmyk = load_image(_save(tmp_path, "c.jpg", Image.new("CMYK", (10, 10), (0, 255, 255, 0))), None)
    assert cmyk[5, 5, 0] > 200 and cmyk[5, 5, 1] < 60  # red
    deep = Image.fromarray(np.full((10, 10), 65535, dtype=np.uint16))
    np.testing.assert_allclose(load_image(_save(tmp_path, "d.png", deep), None), 255.0)
    half = Image.fromarray(np.full((10, 10), 32768, dtype=np.uint16))
    np.testing.assert_allclose(load_image(_save(tmp_path, "h.png", half), None), 127.0, atol=1)
    # A dark 16-bit image stays dark: the scale follows the bit depth, not the content.
    dark = Image.fromarray(np.full((10, 10), 200, dtype=np.uint16))
    np.testing.assert_allclose(load_image(_save(tmp_path, "k.png", dark), None), 0.0, atol=1)


def test_transparency_becomes_white(tmp_path):
    rgba = Image.new("RGBA", (10, 10), (255, 0, 0, 0))
    rgba.paste((0, 0, 255, 255), (0, 0, 5, 10))
    x = load_image(_save(tmp_path, "t.png", rgba), None)
    np.testing.assert_array_equal(x[0, 0], [0, 0, 255])
    np.testing.assert_array_equal(x[0, 9], [255, 255, 255])


def test_exif_rotation_is_applied(tmp_path):
    image = Image.new("RGB", (40, 20), (0, 0, 0))
    image.paste((255, 255, 255), (0, 0, 20, 20))  # left half white
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    path = _save(tmp_path, "r.jpg", image, exif=exif.tobytes(), quality=95)
    x = load_image(path, None)
    assert x.shape == (40, 20, 3)  # portrait after rotation
    assert x[:15].mean() > 200 and x[25:].mean() < 50  # white half on top


def test_missing_and_unreadable_files_name_the_path(tmp_path, monkeypatch):
    missing = tmp_path / "nope.jpg"
    with pytest.raises(ImageError, match="nope.jpg"):
        load_image(missing)
    text = tmp_path / "notes.jpg"
    text.write_text("not an image")
    with pytest.raises(ValueError, match="notes.jpg"):
        load_image(text)
    truncated = _save(tmp_path, "cut.jpg", Image.new("RGB", (200, 200), (1, 2, 3)))
    truncated.write_bytes(truncated.read_bytes()[:300])
    with pytest.raises(ImageError, match="cut.jpg"):
        load_image(truncated)
    huge = _save(tmp_path, "huge.png", Image.new("RGB", (10, 10)))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10)  # a decompression bomb
    with pytest.raises(ImageError, match="huge.png"):
        load_image(huge)


def test_bad_target_size(tmp_path):
    path = _save(tmp_path, "a.png", Image.new("RGB", (5, 5)))
    with pytest.raises(ValueError, match="target_size"):
        load_image(path, target_size=(0, 10))
    with pytest.raises(ValueError, match="target_size"):
        load_image(path, target_size=299)
