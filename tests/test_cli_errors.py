"""Every expected mistake on the command line: exit 1, one line, no traceback.

Each case runs the command line with one bad input and checks what a user
(or a script reading stderr) relies on: exit status 1, exactly one non-empty
line on stderr that names the bad input (its path or its option), no
traceback, and nothing on stdout, which carries results only. Stderr holds
one line per bad input, so a run with a single bad input prints exactly one.

Every case runs in this process (`keras_xception.cli.main`, with its
streams captured), and a few of them, one per kind of command, again as a
user starts the command, in a real process: there an error that escaped
would print a traceback, and whatever a fresh process writes to stderr on
its own would break the one line.

Every case fails before a model is built; the weights named are small
structure-only files, and the Keras cache is empty and offline.
"""

import os
import shutil
import types
import zipfile

import pytest
from PIL import Image

from tests import commandline, weights_files


@pytest.fixture(scope="module")
def files(tmp_path_factory, kitchen_photos):
    """The bad (and a few good) inputs, made once for all the cases."""
    root = tmp_path_factory.mktemp("inputs")
    f = types.SimpleNamespace(root=root)

    # Weights: a structure-only file of each variant, and broken ones.
    f.top_h5 = weights_files.xception_legacy(root / "top.h5", include_top=True)
    f.notop_h5 = weights_files.xception_legacy(root / "notop.h5", include_top=False)
    f.alien_h5 = weights_files.legacy_file(
        root / "alien.h5", [("dense_7", [("dense_7/kernel:0", (10, 3))])]
    )
    f.truncated_h5 = root / "truncated.h5"
    f.truncated_h5.write_bytes(weights_files.h5_bytes()[:4096])
    f.text = root / "notes.txt"
    f.text.write_text("not weights\n")
    f.text_h5 = root / "text.h5"
    f.text_h5.write_text("not weights\n")

    # Images: each bad one alone in its folder or named directly.
    photo = kitchen_photos[0].read_bytes()
    f.empty_jpg = root / "empty.jpg"
    f.empty_jpg.write_bytes(b"")
    f.truncated_jpg = root / "truncated.jpg"
    f.truncated_jpg.write_bytes(photo[:300])
    f.photo_jpg = root / "photo.jpg"
    f.photo_jpg.write_bytes(photo)
    f.text_jpg = root / "text.jpg"
    f.text_jpg.write_text("this is not a JPEG\n")
    f.bad_only_dir = root / "bad_only"
    f.bad_only_dir.mkdir()
    shutil.copy(f.truncated_jpg, f.bad_only_dir / "broken.jpg")
    f.no_images_dir = root / "no_images"
    f.no_images_dir.mkdir()
    (f.no_images_dir / "readme.txt").write_text("no images here\n")
    f.missing = root / "missing.jpg"
    f.dangling = root / "dangling.jpg"
    f.dangling.symlink_to(root / "nothing.jpg")
    f.loop = root / "loop.jpg"
    os.symlink(root / "loop2.jpg", f.loop)
    os.symlink(f.loop, root / "loop2.jpg")

    # Outputs and models.
    f.a_file = root / "a_file"
    f.a_file.write_text("a regular file\n")
    f.dangling_output = root / "dangling_output"
    f.dangling_output.symlink_to(root / "nowhere" / "dir")
    f.taken = root / "taken"
    f.taken.mkdir()
    (f.taken / "saved_model.pb").write_bytes(b"someone else's")
    f.empty_dir_onnx = root / "empty.onnx"
    f.empty_dir_onnx.mkdir()
    f.text_keras = root / "text.keras"
    f.text_keras.write_text("not a model\n")
    f.partless_keras = root / "partless.keras"
    with zipfile.ZipFile(f.partless_keras, "w") as archive:
        archive.writestr("readme.txt", "no config.json, no weights")
    f.truncated_keras = root / "truncated.keras"
    with zipfile.ZipFile(root / "whole.keras", "w") as archive:
        archive.writestr("config.json", "{}" + " " * 4000)
        archive.writestr("metadata.json", "{}")
        archive.writestr("model.weights.h5", b"\0" * 4000)
    f.truncated_keras.write_bytes((root / "whole.keras").read_bytes()[:2000])

    # A dataset for fine-tune: two classes of two tiny images.
    f.data = root / "data"
    for k, name in enumerate(("cat", "dog")):
        (f.data / name).mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (8, 8), (80 * k, 40, 40 + i)).save(f.data / name / f"{i}.png")
    f.out_keras = root / "out" / "model.keras"
    return f


def _fine_tune(f, *args):
    """fine-tune with options that make a mistaken run short."""
    return ["fine-tune", *args, "--weights", "none", "--image-size", "71",
            "--epochs", "1", "--fine-tune-epochs", "0"]


# (id, lambda files: (command line, what stderr must name)).
PROC_OUT = "/proc/keras-xception-test-output"

CASES = [
    # The command line itself.
    ("no-command", lambda f: ([], "COMMAND")),
    ("unknown-command", lambda f: (["frobnicate"], "frobnicate")),
    ("unknown-top-level-option", lambda f: (["--frobnicate"], "--frobnicate")),
    # classify
    ("classify-empty-file",
     lambda f: (["classify", f.empty_jpg, "--weights", f.top_h5], f.empty_jpg)),
    ("classify-truncated-jpeg",
     lambda f: (["classify", f.truncated_jpg, "--weights", f.top_h5], f.truncated_jpg)),
    ("classify-text-named-jpg",
     lambda f: (["classify", f.text_jpg, "--weights", f.top_h5], f.text_jpg)),
    ("classify-folder-of-a-bad-image",
     lambda f: (["classify", f.bad_only_dir, "--weights", f.top_h5],
                f.bad_only_dir / "broken.jpg")),
    ("classify-folder-without-images",
     lambda f: (["classify", f.no_images_dir, "--weights", f.top_h5], f.no_images_dir)),
    ("classify-missing-path",
     lambda f: (["classify", f.missing, "--weights", f.top_h5], f.missing)),
    ("classify-dangling-symlink",
     lambda f: (["classify", f.dangling, "--weights", f.top_h5], f.dangling)),
    ("classify-symlink-loop",
     lambda f: (["classify", f.loop, "--weights", f.top_h5], f.loop)),
    ("classify-top-0", lambda f: (["classify", f.text_jpg, "--top", "0"], "--top")),
    ("classify-top-negative", lambda f: (["classify", f.text_jpg, "--top", "-1"], "--top")),
    ("classify-top-not-a-number",
     lambda f: (["classify", f.text_jpg, "--top", "abc"], "--top")),
    ("classify-batch-size-0",
     lambda f: (["classify", f.text_jpg, "--batch-size", "0"], "--batch-size")),
    ("classify-unknown-option",
     lambda f: (["classify", f.text_jpg, "--frobnicate"], "--frobnicate")),
    ("classify-weights-text-file",
     lambda f: (["classify", f.bad_only_dir, "--weights", f.text_h5], f.text_h5)),
    ("classify-weights-folder",
     lambda f: (["classify", f.bad_only_dir, "--weights", f.root], f.root)),
    ("classify-weights-missing",
     lambda f: (["classify", f.bad_only_dir, "--weights", f.missing], f.missing)),
    ("classify-weights-without-top",
     lambda f: (["classify", f.bad_only_dir, "--weights", f.notop_h5], f.notop_h5)),
    # an --output that is a link to nothing, before any work
    ("explain-output-a-dangling-link",
     lambda f: (["explain", f.text_jpg, "--output", f.dangling_output], f.dangling_output)),
    ("embed-output-a-dangling-link",
     lambda f: (["embed", f.text_jpg, "--output", f.dangling_output], f.dangling_output)),
    ("classify-output-a-dangling-link",
     lambda f: (["classify", f.text_jpg, "--output", f.dangling_output],
                f.dangling_output)),
    ("export-out-a-dangling-link",
     lambda f: (["export", f.top_h5, f.dangling_output], f.dangling_output)),
    # an --output in a folder whose file system refuses new entries (/proc
    # lets root pass the permission checks; the folder's file system does
    # not). The weights or model named are broken, so a command that read
    # them before checking its output would name them instead.
    ("classify-output-in-proc",
     lambda f: (["classify", f.photo_jpg, "--weights", f.truncated_h5, "--output", PROC_OUT],
                PROC_OUT)),
    ("embed-output-in-proc",
     lambda f: (["embed", f.photo_jpg, "--weights", f.truncated_h5, "--output", PROC_OUT],
                PROC_OUT)),
    ("explain-output-in-proc",
     lambda f: (["explain", f.photo_jpg, "--weights", f.truncated_h5, "--output", PROC_OUT],
                PROC_OUT)),
    ("export-out-in-proc", lambda f: (["export", f.truncated_h5, PROC_OUT], PROC_OUT)),
    ("quantize-output-in-proc",
     lambda f: (["quantize", f.truncated_keras, "--calibration", f.data,
                 "--output", PROC_OUT], PROC_OUT)),
    ("fine-tune-output-in-proc",
     lambda f: (_fine_tune(f, f.data, "--output", PROC_OUT + ".keras"), PROC_OUT + ".keras")),
    # export
    ("export-out-under-a-file",
     lambda f: (["export", f.top_h5, f.a_file / "out"], f.a_file)),
    ("export-out-not-empty", lambda f: (["export", f.top_h5, f.taken], f.taken)),
    ("export-onnx-out-with-a-trailing-slash",
     lambda f: (["export", f.top_h5, str(f.root / "x.onnx") + "/", "--format", "onnx"],
                "trailing '/'")),
    ("export-out-empty", lambda f: (["export", f.top_h5, ""], "OUT is empty")),
    ("export-onnx-out-is-a-folder",
     lambda f: (["export", f.top_h5, f.empty_dir_onnx, "--format", "onnx"],
                f.empty_dir_onnx)),
    ("export-keras-text-file",
     lambda f: (["export", f.text_keras, f.root / "x1"], f.text_keras)),
    ("export-keras-zip-without-parts",
     lambda f: (["export", f.partless_keras, f.root / "x2"], f.partless_keras)),
    ("export-keras-truncated",
     lambda f: (["export", f.truncated_keras, f.root / "x3"], f.truncated_keras)),
    ("export-keras-missing",
     lambda f: (["export", f.root / "missing.keras", f.root / "x4"],
                f.root / "missing.keras")),
    ("export-weights-unexpected-structure",
     lambda f: (["export", f.alien_h5, f.root / "x5"], f.alien_h5)),
    ("export-weights-truncated",
     lambda f: (["export", f.truncated_h5, f.root / "x6"], f.truncated_h5)),
    ("export-unknown-format",
     lambda f: (["export", f.top_h5, f.root / "x7", "--format", "pickle"], "--format")),
    # weights
    ("weights-verify-text-file", lambda f: (["weights", "verify", f.text], f.text)),
    ("weights-verify-folder", lambda f: (["weights", "verify", f.root], f.root)),
    ("weights-verify-missing", lambda f: (["weights", "verify", f.missing], f.missing)),
    ("weights-verify-truncated",
     lambda f: (["weights", "verify", f.truncated_h5], f.truncated_h5)),
    ("weights-verify-no-path", lambda f: (["weights", "verify"], "PATH")),
    ("weights-unknown-action", lambda f: (["weights", "frobnicate"], "frobnicate")),
    ("weights-download-cache-under-a-file",
     lambda f: (["weights", "download", "--cache-dir", f.a_file / "cache"], f.a_file)),
    # fine-tune
    ("fine-tune-data-missing",
     lambda f: (_fine_tune(f, f.root / "no_data", "--output", f.out_keras),
                f.root / "no_data")),
    ("fine-tune-data-is-a-file",
     lambda f: (_fine_tune(f, f.a_file, "--output", f.out_keras), f.a_file)),
    ("fine-tune-output-under-a-file",
     lambda f: (_fine_tune(f, f.data, "--output", f.a_file / "model.keras"), f.a_file)),
    ("fine-tune-epochs-negative",
     lambda f: (_fine_tune(f, f.data, "--output", f.out_keras) + ["--epochs", "-1"],
                "--epochs")),
    ("fine-tune-batch-size-0",
     lambda f: (_fine_tune(f, f.data, "--output", f.out_keras) + ["--batch-size", "0"],
                "--batch-size")),
    ("fine-tune-val-split-1.5",
     lambda f: (_fine_tune(f, f.data, "--output", f.out_keras) + ["--val-split", "1.5"],
                "--val-split")),
    ("fine-tune-no-output", lambda f: (["fine-tune", f.data], "--output")),
    # benchmark
    ("benchmark-rounds-0", lambda f: (["benchmark", "--rounds", "0"], "--rounds")),
    ("benchmark-batch-size-negative",
     lambda f: (["benchmark", "--batch-size", "-8"], "--batch-size")),
    ("benchmark-json-under-a-file",
     lambda f: (["benchmark", "--rounds", "1", "--json", f.a_file / "b.json"], f.a_file)),
]


# One case per kind of command (argparse alone, reading an image, a weights
# file, fine-tune's data, quantize's output), run again in a real process.
REAL_PROCESS = ("no-command", "classify-truncated-jpeg", "export-weights-truncated",
                "weights-verify-truncated", "fine-tune-data-missing",
                "quantize-output-in-proc")
assert set(REAL_PROCESS) <= {i for i, _ in CASES}, "REAL_PROCESS names a case that is gone"


def assert_one_line_naming(done, named, files):
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert "Traceback" not in done.stderr, done.stderr
    assert done.returncode == 1, done.stderr
    assert len(lines) == 1, done.stderr
    assert str(named) in lines[0], done.stderr
    assert done.stdout == ""
    # Nothing written: no output, no temporary file or folder left beside one.
    assert not (files.root / "out").exists()
    assert [p.name for p in files.root.iterdir() if p.name.startswith(".")] == []


@pytest.mark.parametrize("case", [c for _, c in CASES], ids=[i for i, _ in CASES])
def test_expected_error_is_one_line_and_exit_1(case, files, keras_home):
    argv, named = case(files)
    assert_one_line_naming(commandline.main(*argv), named, files)


@pytest.mark.parametrize("case", [c for i, c in CASES if i in REAL_PROCESS],
                         ids=[i for i, _ in CASES if i in REAL_PROCESS])
def test_in_a_real_process_too(case, files, tmp_path):
    home = tmp_path / "keras_home"  # An empty Keras cache that never reaches the network.
    home.mkdir()
    env = dict(os.environ, KERAS_HOME=str(home), KERAS_XCEPTION_OFFLINE="1")
    argv, named = case(files)
    assert_one_line_naming(commandline.run(*argv, env=env, timeout=120), named, files)


def test_messages_count_one_in_the_singular():
    from keras_xception.errors import counted

    assert counted(1, "held-out image") == "1 held-out image"
    assert counted(9, "held-out image") == "9 held-out images"
    assert counted(1_200, "image") == "1,200 images"
    assert counted(1, "class", "classes") == "1 class"
    assert counted(6, "class", "classes") == "6 classes"
