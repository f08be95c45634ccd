"""`verify` and `read_weights` on good files, damaged files and wrong files.

The good files are the real ImageNet no-top weights (conftest's
`imagenet_notop_files`), in the official Keras 2 layout and as a Keras 3
`.weights.h5`. Wrong files are built with h5py; where only the structure
matters their datasets are declared without data, so they cost nothing.
"""

from __future__ import annotations

import hashlib
import shutil
import zipfile

import h5py
import numpy as np
import pytest

from keras_xception import architecture
from keras_xception.weights import (
    WeightsError,
    cache,
    read_weights,
    registry,
    resolve,
    verify,
)
from keras_xception.weights.validate import inspect
from tests import realweights
from tests.weights_files import keras3_file, legacy_file, xception_legacy
from tests.weights_server import Server

LAYOUTS = ("legacy", "keras3")


def message(excinfo) -> str:
    return str(excinfo.value)


# Good files.


@pytest.mark.parametrize("layout", LAYOUTS)
def test_real_imagenet_files_verify(imagenet_notop_files, layout):
    verify(imagenet_notop_files[layout])
    verify(imagenet_notop_files[layout], include_top=False)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_read_weights_returns_the_real_arrays_in_layout_order(
    imagenet_notop_files, imagenet_notop_arrays, layout
):
    arrays = read_weights(imagenet_notop_files[layout], include_top=False)
    assert len(arrays) == len(imagenet_notop_arrays)
    for got, want in zip(arrays, imagenet_notop_arrays, strict=True):
        assert len(got) == len(want)
        for a, b in zip(got, want):
            assert a.shape == b.shape and np.array_equal(a, b)


def test_layout_is_read_from_the_contents_not_the_suffix(
    imagenet_notop_files, imagenet_notop_arrays, tmp_path
):
    renamed = shutil.copy(imagenet_notop_files["keras3"], tmp_path / "weights.h5")
    arrays = read_weights(renamed, include_top=False)
    assert np.array_equal(arrays[-1][0], imagenet_notop_arrays[-1][0])


def test_file_hash_is_checked(imagenet_notop_files):
    path = imagenet_notop_files["legacy"]
    data = path.read_bytes()
    verify(path, file_hash=hashlib.md5(data).hexdigest())
    verify(path, file_hash=hashlib.sha256(data).hexdigest().upper())
    with pytest.raises(WeightsError) as err:
        verify(path, file_hash="0" * 32)
    assert "0" * 32 in message(err) and hashlib.md5(data).hexdigest() in message(err)
    assert "Download or copy it again" in message(err) and "Delete" not in message(err)


# Damaged files.


@pytest.mark.parametrize("keep", [0.5, 0.999, 1000 / 83_000_000])
def test_truncated_file(imagenet_notop_files, tmp_path, keep):
    data = imagenet_notop_files["legacy"].read_bytes()
    path = tmp_path / "cut.h5"
    path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(WeightsError, match="truncated HDF5 file") as err:
        verify(path)
    assert f"{len(data):,}" in message(err)  # The size the header declares.
    assert "download or copy the file again" in message(err)
    with pytest.raises(WeightsError, match="truncated"):
        read_weights(path, include_top=False)


def test_html_file(tmp_path):
    path = tmp_path / "xception.h5"
    path.write_text("\n<!doctype html><html><head><title>Sign in</title></head></html>")
    with pytest.raises(WeightsError, match="an HTML page.*login or proxy page"):
        verify(path)


@pytest.mark.parametrize(
    "content, words",
    [(b"", "empty"), (b"GIF89a" + b"\0" * 100, "not an HDF5 file")],
)
def test_empty_or_foreign_file(tmp_path, content, words):
    path = tmp_path / "w.h5"
    path.write_bytes(content)
    with pytest.raises(WeightsError, match=words):
        read_weights(path, include_top=False)


def test_keras_model_archive_says_how_to_get_weights():
    path = realweights.package_root() / realweights.MODEL_FILE
    with pytest.raises(WeightsError, match="zip archive.*save_weights"):
        verify(path)


def test_incomplete_legacy_file(tmp_path):
    path = xception_legacy(tmp_path / "w.h5", include_top=False)
    with h5py.File(path, "a") as f:
        del f["block5_sepconv2/block5_sepconv2/w1:0"]
    with pytest.raises(WeightsError, match="incomplete.*block5_sepconv2"):
        verify(path)


def test_missing_file_and_folder_name_the_path(tmp_path):
    with pytest.raises(WeightsError, match="not found") as err:
        verify(tmp_path / "nope.h5")
    assert str(tmp_path / "nope.h5") in message(err)
    with pytest.raises(WeightsError, match="is a folder"):
        verify(tmp_path)


# Wrong files.


def test_small_keras3_model_is_another_architecture(tmp_path):
    import keras

    model = keras.Sequential(
        [keras.Input((8,)), keras.layers.Dense(4), keras.layers.Dense(2)]
    )
    path = tmp_path / "mlp.weights.h5"
    model.save_weights(path)
    with pytest.raises(WeightsError) as err:
        verify(path)
    assert "not an Xception weights file" in message(err)
    assert "2 weighted layers (2 dense)" in message(err)
    assert "80 without the classifier top and 81 with it" in message(err)


def test_legacy_model_is_another_architecture(tmp_path):
    path = legacy_file(
        tmp_path / "mlp.h5",
        [
            ("dense", [("dense/kernel:0", (8, 4)), ("dense/bias:0", (4,))]),
            ("dense_1", [("dense_1/kernel:0", (4, 2)), ("dense_1/bias:0", (2,))]),
        ],
    )
    with pytest.raises(WeightsError, match="holds 2 weighted layers"):
        read_weights(path, include_top=True)


def test_resnet_like_keras3_file_lists_its_layer_kinds(tmp_path):
    layers = [
        (f"conv2d_{i}" if i else "conv2d", [(1, 1, 64, 64), (64,)]) for i in range(53)
    ]
    layers += [
        (f"batch_normalization_{i}" if i else "batch_normalization", [(64,)] * 4)
        for i in range(53)
    ]
    layers += [("dense", [(2048, 1000), (1000,)])]
    path = keras3_file(tmp_path / "resnet.weights.h5", layers)
    with pytest.raises(WeightsError) as err:
        verify(path)
    assert (
        "107 weighted layers (53 batch_normalization, 53 conv2d, 1 dense)"
        in message(err)
    )


def test_model_wrapping_xception_points_at_the_nested_weights(tmp_path):
    archive = realweights.package_root() / realweights.MODEL_FILE
    with zipfile.ZipFile(archive) as z:
        path = z.extract("model.weights.h5", tmp_path)
    with pytest.raises(WeightsError) as err:
        verify(path)
    assert "layers/functional is a nested model" in message(err)
    assert "get_layer(NAME).save_weights" in message(err)


def test_same_layer_count_but_other_shapes_names_the_first_difference(tmp_path):
    layers = [
        (e.name, [(f"{e.name}/w{i}:0", s) for i, s in enumerate(e.shapes)])
        for e in architecture.weight_layout(False)
    ]
    name, weights = layers[10]
    layers[10] = (name, [(weights[0][0], (3, 3, 64, 1)), weights[1]])
    path = legacy_file(tmp_path / "other.h5", layers)
    with pytest.raises(WeightsError) as err:
        verify(path)
    assert "not Xception's weights: weighted layer #11 ('block3_sepconv1')" in message(
        err
    )
    assert "(3, 3, 64, 1)" in message(err) and "(3, 3, 128, 1)" in message(err)


def test_81_layers_without_a_classifier_is_not_called_the_top_variant(tmp_path):
    layers = [
        (e.name, [(f"{e.name}/w{i}:0", s) for i, s in enumerate(e.shapes)])
        for e in architecture.weight_layout(False)
    ]
    layers.append(("extra_bn", [(f"extra_bn/w{i}:0", (2048,)) for i in range(4)]))
    path = legacy_file(tmp_path / "extra.h5", layers)
    with pytest.raises(
        WeightsError, match="not Xception's weights: weighted layer #81"
    ):
        read_weights(path, include_top=False)


def test_hdf5_without_keras_layout(tmp_path):
    path = tmp_path / "data.h5"
    with h5py.File(path, "w") as f:
        f["images"] = np.zeros((2, 2))
    with pytest.raises(WeightsError, match="neither the Keras 2 .* nor the Keras 3"):
        verify(path)


def test_integer_weights_are_refused(tmp_path):
    path = xception_legacy(tmp_path / "w.h5", include_top=False)
    with h5py.File(path, "a") as f:
        name = "block1_conv1/block1_conv1/w0:0"
        del f[name]
        f.create_dataset(name, shape=(3, 3, 3, 32), dtype="int32")
    with pytest.raises(WeightsError, match="dtype int32"):
        verify(path)


def test_top_file_for_a_no_top_model(tmp_path):
    path = xception_legacy(tmp_path / "top.h5", include_top=True)
    verify(path, include_top=True)
    with pytest.raises(WeightsError) as err:
        read_weights(path, include_top=False)
    assert (
        "this file has the classifier top; the model was built with include_top=False"
        in message(err)
    )
    assert registry.get(False).fname in message(err)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_no_top_file_for_a_model_with_top(imagenet_notop_files, layout):
    with pytest.raises(WeightsError) as err:
        read_weights(imagenet_notop_files[layout], include_top=True)
    assert "this file has no classifier top" in message(err)
    assert "the model was built with include_top=True" in message(err)
    with pytest.raises(WeightsError, match="it was checked for include_top=True"):
        verify(imagenet_notop_files[layout], include_top=True)


def test_classes_mismatch_names_both_numbers(tmp_path):
    path = xception_legacy(tmp_path / "top10.h5", include_top=True, classes=10)
    verify(path)  # A fine Xception file, with a 10-class classifier.
    with pytest.raises(WeightsError) as err:
        read_weights(path, include_top=True, classes=1000)
    assert "classifier has 10 classes" in message(err)
    assert "classes=1000" in message(err)
    arrays = read_weights(path, include_top=True, classes=10)
    assert arrays[-1][0].shape == (2048, 10)


def test_channels_mismatch_names_both_numbers(tmp_path):
    path = xception_legacy(tmp_path / "gray.h5", include_top=False, channels=1)
    with pytest.raises(WeightsError) as err:
        read_weights(path, include_top=False)
    assert "1-channel input" in message(err) and "channels=3" in message(err)
    assert len(read_weights(path, include_top=False, channels=1)) == 80


# resolve: the builder's `weights` argument.


def test_resolve_local_path(imagenet_notop_files):
    assert (
        resolve(str(imagenet_notop_files["legacy"]), include_top=False)
        == (imagenet_notop_files["legacy"])
    )


def test_resolve_missing_path_names_it(tmp_path):
    with pytest.raises(WeightsError, match="not found") as err:
        resolve(str(tmp_path / "w.h5"), include_top=False)
    assert str(tmp_path / "w.h5") in message(err)


def test_resolve_imagenet_uses_the_verified_cached_file(
    keras_home, imagenet_notop_files, monkeypatch
):
    path = imagenet_notop_files["legacy"]
    entry = registry.get(False)
    cached = keras_home / "models" / entry.fname
    cached.parent.mkdir()
    shutil.copy(path, cached)
    with pytest.raises(WeightsError, match="KERAS_XCEPTION_OFFLINE=1.*unusable"):
        resolve("imagenet", include_top=False)  # Not the official file's md5.
    digest = hashlib.md5(path.read_bytes()).hexdigest()
    monkeypatch.setattr(
        registry,
        "WEIGHTS",
        tuple(
            e if e.include_top else type(e)(**{**e.__dict__, "md5": digest})
            for e in registry.WEIGHTS
        ),
    )
    assert resolve("imagenet", include_top=False) == cached


def test_resolve_url_downloads_it(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    monkeypatch.delenv("KERAS_XCEPTION_OFFLINE", raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    path = xception_legacy(tmp_path / "src.h5", include_top=False)
    with Server() as server:
        url = server.add("mine.h5", path.read_bytes())
        got = resolve(url, include_top=False)
    assert got == tmp_path / "models" / cache.url_fname(url)
    assert len(read_weights(got, include_top=False)) == 80


# Every kind of part of a real file damaged: one WeightsError naming the file,
# never a traceback. The cases edit a skeleton of each real file (every group,
# dataset and attribute, datasets without data: a few hundred kilobytes).
# Checking a file walks all of it (about 0.15 s), so each role a group or
# dataset plays in the file is damaged at its first, middle and last place
# rather than all 447 (legacy) and 500 (Keras 3) of them.


def _skeleton(source, dest):
    """A copy of `source` with its structure and attributes but no array data."""

    def copy_attrs(src, out):
        for key, value in src.attrs.items():
            out.attrs[key] = value

    with h5py.File(source, "r") as src, h5py.File(dest, "w") as out:
        copy_attrs(src, out)

        def visit(name, obj):
            if isinstance(obj, h5py.Group):
                made = out.require_group(name)
            else:
                made = out.create_dataset(name, shape=obj.shape, dtype=obj.dtype)
            copy_attrs(obj, made)

        src.visititems(visit)
    return dest


def _role(name, is_dataset, holds_weights) -> tuple:
    """What a group or dataset is in the file: its depth, kind and fixed names."""
    fixed = ("layers", "vars", "top_level_model_weights")
    parts = tuple(part if part in fixed else "*" for part in name.split("/"))
    return parts, is_dataset, holds_weights


@pytest.fixture(scope="session")
def skeletons(imagenet_notop_files, tmp_path_factory):
    """Per layout: the skeleton file, and the parts to damage with their kinds.

    Every role (see `_role`) is represented by its first, middle and last
    member; a part is `(name, is_dataset, holds_weights)`.
    """
    folder = tmp_path_factory.mktemp("skeletons")
    out = {}
    for layout, path in imagenet_notop_files.items():
        skeleton = _skeleton(path, folder / path.name)
        kinds = {}
        with h5py.File(skeleton, "r") as f:
            f.visititems(
                lambda name, obj: kinds.__setitem__(name, isinstance(obj, h5py.Dataset))
            )
        roles = {}
        for name, is_dataset in kinds.items():
            holds = is_dataset or any(
                kinds[other] for other in kinds if other.startswith(name + "/")
            )
            roles.setdefault(_role(name, is_dataset, holds), []).append(
                (name, is_dataset, holds)
            )
        parts = sorted(
            {members[i] for members in roles.values() for i in (0, len(members) // 2, -1)}
        )
        out[layout] = (skeleton, parts, len(kinds))
    return out


def _outcome(path):
    """`None` when both checks give one-line WeightsErrors naming `path`, else why not."""
    problems = []
    for call in (
        lambda: inspect(path),
        lambda: read_weights(path, include_top=False),
    ):
        try:
            call()
            problems.append("accepted")
        except WeightsError as err:
            if str(path) not in str(err) or "\n" in str(err):
                problems.append(f"WeightsError not naming the file on one line: {err}")
        except Exception as err:  # noqa: BLE001 - the point of the test.
            problems.append(f"{type(err).__name__}: {err}")
    return "; ".join(problems) or None


def _summary_of(path):
    summary = inspect(path)
    return (summary.layout, summary.include_top, [layer.shapes for layer in summary.layers])


def test_skeletons_cover_every_role_of_both_real_files(skeletons):
    for layout, (skeleton, parts, total) in skeletons.items():
        assert total > 400 and 10 <= len(parts) < 60, (layout, total, len(parts))
        assert any(is_dataset for _, is_dataset, _ in parts)
        assert any(not holds for _, _, holds in parts)
        assert _summary_of(skeleton)[2] == [
            e.shapes for e in architecture.weight_layout(False)
        ]


@pytest.mark.slow
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("damage", ["wrong_kind", "removed"])
def test_each_part_of_a_real_file_damaged_gives_one_weights_error(
    skeletons, tmp_path, layout, damage
):
    skeleton, parts, _ = skeletons[layout]
    want = _summary_of(skeleton)
    failures = []
    for name, is_dataset, holds_weights in parts:
        path = shutil.copy(skeleton, tmp_path / skeleton.name)
        with h5py.File(path, "a") as f:
            del f[name]
            if damage == "wrong_kind" and is_dataset:
                f.create_group(name)
            elif damage == "wrong_kind":
                f.create_dataset(name, data=np.zeros(3, "float32"))
        problem = _outcome(path)
        if damage == "removed" and not holds_weights and problem == "accepted; accepted":
            # An empty slot (a weightless layer's group, the model's own
            # `vars`): Keras loads the file without it; so may the checker,
            # if it reads the same weights.
            if _summary_of(path) != want:
                failures.append(f"{name}: removed, and read differently")
        elif problem is not None:
            failures.append(f"{name}: {problem}")
    assert not failures, f"{len(failures)} of {len(parts)} cases:\n" + "\n".join(failures)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("keep", [0, 8, 100, 2048, 0.5, -1])
def test_a_truncated_real_file_gives_one_weights_error(
    imagenet_notop_files, tmp_path, layout, keep
):
    data = imagenet_notop_files[layout].read_bytes()
    if keep == -1:
        cut = len(data) - 1
    elif isinstance(keep, float):
        cut = int(len(data) * keep)
    else:
        cut = keep
    path = tmp_path / imagenet_notop_files[layout].name
    path.write_bytes(data[:cut])
    assert _outcome(path) is None


@pytest.mark.parametrize(
    ("layout", "name", "damage"),
    [
        ("keras3", "layers/conv2d/vars/0", "wrong_kind"),  # Once an AttributeError.
        ("legacy", "block14_sepconv2_bn", "removed"),
    ],
)
def test_xception_with_a_damaged_file_raises_weights_error(
    skeletons, tmp_path, layout, name, damage
):
    from keras_xception.model import Xception

    skeleton = skeletons[layout][0]
    path = shutil.copy(skeleton, tmp_path / skeleton.name)
    with h5py.File(path, "a") as f:
        del f[name]
        if damage == "wrong_kind":
            f.create_group(name)
    with pytest.raises(WeightsError) as err:
        Xception(weights=str(path), include_top=False)
    assert str(path) in message(err) and "\n" not in message(err)
