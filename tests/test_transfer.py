"""Transfer learning: `build_classifier`, `unfreeze`, `fit_classifier`, saving."""

import json
import os
import shutil
import subprocess
import sys
import zipfile

import keras
import numpy as np
import pytest

from keras_xception import architecture, build_classifier, unfreeze
from keras_xception.training import data
from keras_xception.errors import ConfigError
from keras_xception.preprocessing import load_image, preprocess_input
from keras_xception.transfer import (
    fit_classifier,
    load_classifier,
    read_class_names,
    save_classifier,
)

SIZE = 160  # small enough to train in seconds, large enough for ImageNet features


@pytest.fixture(scope="module")
def kitchen_dir(kitchen_labels, tmp_path_factory):
    """The 9 labelled kitchen photos sorted into class folders by train.csv."""
    root = tmp_path_factory.mktemp("kitchen")
    for path, label in kitchen_labels.items():
        (root / label).mkdir(exist_ok=True)
        shutil.copy(path, root / label / path.name)
    return root


@pytest.fixture(scope="module")
def trained(kitchen_dir, imagenet_notop_files, tmp_path_factory):
    """A classifier fine-tuned on the kitchen photos: (model, history, folder, work_dir).

    The base starts from the real ImageNet no-top weights, loaded from the
    official Keras 2 file layout as `--weights PATH` loads them.
    """
    keras.utils.set_random_seed(0)
    folder = data.scan(kitchen_dir)
    (paths, labels), _ = data.split(folder, 0)
    model = build_classifier(
        folder.num_classes,
        image_size=SIZE,
        weights=str(imagenet_notop_files["legacy"]),
        class_names=folder.class_names,
    )
    train = data.make_dataset(
        paths, labels, image_size=SIZE, batch_size=4, shuffle=True
    )
    work_dir = tmp_path_factory.mktemp("run")
    history = fit_classifier(
        model, train, epochs=6, fine_tune_epochs=1, work_dir=work_dir, verbose=False
    )
    return model, history, folder, work_dir


@pytest.mark.slow
def test_fine_tuning_kitchen_photos_reaches_80_percent_training_accuracy(trained):
    model, history, folder, _ = trained
    assert history["phase"] == ["head"] * 6 + ["fine-tune"]
    assert max(history["accuracy"]) >= 0.8, history
    # Measured without augmentation or dropout, on the training photos.
    (paths, labels), _ = data.split(folder, 0)
    clean = data.make_dataset(paths, labels, image_size=SIZE, batch_size=9)
    result = model.evaluate(clean, return_dict=True, verbose=0)
    assert result["accuracy"] >= 0.8, result


@pytest.mark.slow
def test_batchnorm_keeps_imagenet_statistics_through_both_phases(
    trained, imagenet_notop_arrays
):
    model, _, _, _ = trained
    layout = architecture.weight_layout(False)
    base = model.get_layer("xception")
    for entry, values in zip(layout, imagenet_notop_arrays, strict=True):
        if entry.kind == "BatchNormalization":
            now = base.get_layer(entry.name).get_weights()
            for before, after in zip(values, now, strict=True):
                np.testing.assert_array_equal(before, after, err_msg=entry.name)
    # Blocks before block13 were never trained.
    np.testing.assert_array_equal(
        base.get_layer("block12_sepconv3").get_weights()[1],
        imagenet_notop_arrays[[e.name for e in layout].index("block12_sepconv3")][1],
    )


@pytest.mark.slow
def test_run_state_is_cleaned_up_and_best_weights_kept(trained):
    _, _, _, work_dir = trained
    assert sorted(p.name for p in work_dir.iterdir()) == ["best.weights.h5"]


@pytest.mark.slow
def test_saved_model_takes_raw_images_carries_class_names_and_loads_plainly(
    trained, kitchen_photos, tmp_path
):
    model, _, folder, _ = trained
    path = tmp_path / "kitchen.keras"
    save_classifier(model, path)
    assert sorted(os.listdir(tmp_path)) == ["kitchen.keras"]  # no temp file left

    loaded = keras.saving.load_model(path)  # no custom_objects
    assert loaded.input_shape == (None, SIZE, SIZE, 3)
    raw = np.stack([load_image(p, (SIZE, SIZE)) for p in kitchen_photos[:4]])
    assert raw.max() > 1.5  # really 0-255 pixels
    np.testing.assert_allclose(
        loaded.predict(raw, verbose=0), model.predict(raw, verbose=0), atol=1e-5
    )
    with zipfile.ZipFile(path) as archive:
        metadata = json.loads(archive.read("metadata.json"))
    assert metadata["class_names"] == list(folder.class_names)
    assert read_class_names(path) == folder.class_names
    assert load_classifier(path).class_names == folder.class_names


@pytest.mark.slow
def test_classifier_preprocesses_inside_and_augments_only_in_training():
    keras.utils.set_random_seed(1)
    model = build_classifier(3, image_size=71, weights=None)
    assert [layer.name for layer in model.layers] == [
        "image",
        "augmentation",
        "preprocess",
        "xception",
        "avg_pool",
        "dropout",
        "predictions",
    ]
    rng = np.random.default_rng(0)
    raw = rng.uniform(0, 255, (2, 71, 71, 3)).astype("float32")
    base = model.get_layer("xception")
    head = model.get_layer("predictions")
    features = base.predict(preprocess_input(raw), verbose=0).mean(axis=(1, 2))
    expected = keras.ops.convert_to_numpy(head(features))
    # predict: no augmentation, no dropout, preprocessing inside.
    np.testing.assert_allclose(model.predict(raw, verbose=0), expected, atol=1e-5)
    augmented = model.get_layer("augmentation")(raw, training=True)
    assert not np.allclose(keras.ops.convert_to_numpy(augmented), raw)


def test_base_is_frozen_and_only_the_head_trains():
    model = build_classifier(4, image_size=71, weights=None, dropout=0)
    assert model.get_layer("xception").trainable is False
    assert [w.path for w in model.trainable_weights] == [
        "predictions/kernel",
        "predictions/bias",
    ]
    assert "dropout" not in [layer.name for layer in model.layers]


def test_unfreeze_trains_from_the_block_and_keeps_batchnorm_frozen():
    model = build_classifier(2, image_size=71, weights=None)
    assert unfreeze(model, "block13") is model
    base = model.get_layer("xception")
    trainable = {layer.name for layer in base.layers if layer.trainable}
    assert trainable == {
        "block13_sepconv1_act",
        "block13_sepconv1",
        "block13_sepconv2_act",
        "block13_sepconv2",
        "block13_residual_conv",
        "block13_pool",
        "block13_add",
        "block14_sepconv1",
        "block14_sepconv1_act",
        "block14_sepconv2",
        "block14_sepconv2_act",
    }
    unfreeze(model, 1)  # block number works too
    bn = [
        layer
        for layer in base.layers
        if isinstance(layer, keras.layers.BatchNormalization)
    ]
    assert bn and not any(layer.trainable for layer in bn)
    assert base.get_layer("block1_conv1").trainable


def test_unfreeze_names_the_valid_blocks():
    model = build_classifier(2, image_size=71, weights=None)
    with pytest.raises(
        ConfigError, match=r"block15.*Valid blocks: block1, block2, .*block14"
    ):
        unfreeze(model, "block15")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(num_classes=1), "num_classes=1"),
        (dict(num_classes=3, image_size=70), "image_size=70"),
        (dict(num_classes=3, dropout=1.0), "dropout=1.0"),
        (dict(num_classes=3, class_names=["a", "b"]), "class_names"),
    ],
)
def test_build_classifier_rejects_bad_arguments(kwargs, message):
    num_classes = kwargs.pop("num_classes")
    with pytest.raises(ConfigError, match=message):
        build_classifier(num_classes, weights=None, **kwargs)


def test_failed_save_leaves_previous_file_and_no_temp(tmp_path):
    model = build_classifier(2, image_size=71, weights=None, augment=False)
    path = tmp_path / "model.keras"
    path.write_bytes(b"previous")
    with pytest.raises(ConfigError, match="2 outputs but 3 class names"):
        save_classifier(model, path, class_names=["a", "b", "c"])
    with pytest.raises(ConfigError, match=r"\.keras"):
        save_classifier(model, tmp_path / "model.h5")

    def broken_save(*args, **kwargs):
        raise OSError("disk full")

    model.save = broken_save
    with pytest.raises(OSError, match="disk full"):
        save_classifier(model, path, class_names=["a", "b"])
    assert path.read_bytes() == b"previous"
    assert os.listdir(tmp_path) == ["model.keras"]


class Interrupt(Exception):
    pass


class InterruptAt(keras.callbacks.Callback):
    """Raises when the `count`-th epoch of the run begins, as a killed process stops."""

    def __init__(self, count):
        super().__init__()
        self.count = count
        self.begun = 0

    def on_epoch_begin(self, epoch, logs=None):
        self.begun += 1
        if self.begun == self.count:
            raise Interrupt(epoch)


def traces_of_the_train_step(model):
    """A list that grows by one each time Keras traces `model`'s train step
    (its Python code runs only then, not at each step)."""
    traced = []
    step = model.train_step

    def train_step(*args):  # (data), or (state, data) under JAX
        traced.append(1)
        return step(*args)

    model.train_step = train_step
    return traced


@pytest.mark.slow
def test_interrupted_run_resumes_in_its_phase_after_the_last_epoch(tmp_path):
    keras.utils.set_random_seed(2)
    rng = np.random.default_rng(2)
    images = rng.uniform(0, 255, (6, 71, 71, 3)).astype("uint8")
    import tensorflow as tf

    train = tf.data.Dataset.from_tensor_slices((images, np.array([0, 1] * 3))).batch(3)
    model = build_classifier(2, image_size=71, weights=None)
    traced = traces_of_the_train_step(model)
    options = dict(epochs=2, fine_tune_epochs=2, work_dir=tmp_path, verbose=False)
    with pytest.raises(Interrupt):  # in the second fine-tune epoch
        fit_classifier(model, train, callbacks=[InterruptAt(4)], **options)
    # Each phase traced its step once: its variables (the optimizer's, the
    # metrics') were made before, or the first trace would be done twice.
    assert len(traced) == 2
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*")) == [
        "checkpoint-1-0002.npz",
        "checkpoint-2-0001.npz",
    ]
    after_three = [w.numpy() for w in model.weights]

    model = build_classifier(2, image_size=71, weights=None)
    with pytest.raises(ConfigError, match="interrupted training run"):
        fit_classifier(model, train, **options)
    resumed = []

    class Record(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            if not resumed:  # the weights restored before the first step
                resumed.extend(w.numpy() for w in model.weights)
            resumed.append(epoch)

    traced = traces_of_the_train_step(model)
    history = fit_classifier(model, train, resume=True, callbacks=[Record()], **options)
    assert len(traced) == 1  # the fine-tune phase only
    # Head phase skipped, fine-tune epoch 1 restored: only its epoch 2 runs.
    assert resumed[-1:] == [1] and len(resumed) == len(after_three) + 1
    for before, after in zip(after_three, resumed, strict=False):
        np.testing.assert_array_equal(before, after)
    assert history["phase"] == ["head", "head", "fine-tune", "fine-tune"]
    assert len(history["loss"]) == 4
    assert not list(tmp_path.glob("checkpoint-*"))
    with pytest.raises(ConfigError, match="Nothing to resume"):
        fit_classifier(model, train, resume=True, **options)


@pytest.mark.slow
def test_a_mixed_float16_run_resumes(tmp_path):
    """Under mixed_float16 Keras wraps Adam in a LossScaleOptimizer, whose
    loss scale has variables of its own: resuming restores them all once."""
    import tensorflow as tf

    keras.utils.set_random_seed(3)
    images = np.random.default_rng(3).uniform(0, 255, (6, 71, 71, 3)).astype("uint8")
    train = tf.data.Dataset.from_tensor_slices((images, np.array([0, 1] * 3))).batch(3)
    options = dict(epochs=2, fine_tune_epochs=0, work_dir=tmp_path, verbose=False)
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_float16")
    try:
        model = build_classifier(2, image_size=71, weights=None)
        with pytest.raises(Interrupt):  # in the second epoch
            fit_classifier(model, train, callbacks=[InterruptAt(2)], **options)
        assert type(model.optimizer).__name__ == "LossScaleOptimizer"
        saved = [v.numpy() for v in model.optimizer.variables]
        model = build_classifier(2, image_size=71, weights=None)
        restored = []

        class Record(keras.callbacks.Callback):
            def on_epoch_begin(self, epoch, logs=None):
                restored.extend(v.numpy() for v in model.optimizer.variables)

        history = fit_classifier(model, train, resume=True, callbacks=[Record()], **options)
    finally:
        keras.config.set_dtype_policy(previous)
    assert history["phase"] == ["head", "head"]
    assert len(restored) == len(saved)
    for before, after in zip(saved, restored, strict=True):
        np.testing.assert_array_equal(before, after)


# A fresh process: TensorFlow's logical devices are fixed once it has started.
DISTRIBUTED = """
import json
import numpy as np
import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from keras_xception.transfer import build_classifier, fit_classifier

strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
with strategy.scope():
    model = build_classifier(2, image_size=71, weights=None)
images = np.random.default_rng(4).uniform(0, 255, (8, 71, 71, 3)).astype("uint8")
train = strategy.experimental_distribute_dataset(
    tf.data.Dataset.from_tensor_slices((images, np.array([0, 1] * 4))).batch(4))
history = fit_classifier(model, train, epochs=1, fine_tune_epochs=0, verbose=False)
print(json.dumps(history["phase"]))
"""


@pytest.mark.slow
def test_a_distributed_dataset_trains_a_model_built_under_its_strategy():
    """`strategy=None` means the model's own: a dataset distributed by it,
    whose batches are per replica, trains as Keras's own `fit` would."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    done = subprocess.run([sys.executable, "-c", DISTRIBUTED], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.splitlines()[-1]) == ["head"]
