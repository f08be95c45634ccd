"""`keras-xception weights download | verify | path` through the real dispatcher.

Only the `weights` subcommand is registered, so these tests do not depend on
the other subcommands' modules.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import pathlib
import subprocess
import sys

import pytest

from keras_xception import cli
from keras_xception.weights import registry, transfer
from tests.weights_files import h5_bytes, md5, xception_legacy
from tests.weights_server import FakeClock, Server

NOTOP = registry.get(False)
TOP = registry.get(True)


@pytest.fixture
def run(monkeypatch, capsys):
    """Runs the command line; returns (exit status, stdout, stderr)."""
    monkeypatch.setattr(cli, "COMMANDS", ("weights",))

    def invoke(*argv):
        status = cli.main(["weights", *map(str, argv)])
        out, err = capsys.readouterr()
        return status, out, err

    return invoke


@pytest.fixture
def online(keras_home, monkeypatch):
    """conftest's private cache, with downloads allowed from 127.0.0.1 only."""
    monkeypatch.delenv("KERAS_XCEPTION_OFFLINE")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    return keras_home / "models"


def with_md5(monkeypatch, include_top, digest):
    """Replaces the registry md5 of one variant, for a file we can serve."""
    monkeypatch.setattr(
        registry,
        "WEIGHTS",
        tuple(
            dataclasses.replace(e, md5=digest) if e.include_top == include_top else e
            for e in registry.WEIGHTS
        ),
    )


def test_path_on_an_empty_cache_lists_both_files_as_missing(run, keras_home):
    status, out, err = run("path")
    assert status == 0 and err == ""
    assert f"cache: {keras_home / 'models'}" in out
    assert out.count("missing") == 2
    assert TOP.fname in out and NOTOP.fname in out
    assert "offline (KERAS_XCEPTION_OFFLINE): yes" in out


def test_path_reports_ok_and_hash_mismatch(run, keras_home, monkeypatch, tmp_path):
    folder = keras_home / "models"
    folder.mkdir()
    good = xception_legacy(folder / NOTOP.fname, include_top=False)
    with_md5(monkeypatch, False, md5(good.read_bytes()))
    (folder / TOP.fname).write_bytes(h5_bytes())
    status, out, _ = run("path")
    assert status == 1
    assert f"{good}: ok (md5 verified)" in out
    assert f"hash mismatch: md5 {md5(h5_bytes())}, expected {TOP.md5}" in out


def test_path_names_a_folder_where_a_download_would_write(run, keras_home, monkeypatch):
    # classify refuses it too, while no good copy is cached: a download
    # cannot replace a folder.
    folder = keras_home / "models"
    blocker = folder / TOP.fname
    blocker.mkdir(parents=True)
    status, out, err = run("path")
    assert status == 1 and err == ""
    assert f"{blocker}: a folder, where a download of this file would write; remove it" in out
    assert out.count("missing") == 1  # the other file only
    # A good copy cached: a folder left where its partial download goes is
    # named, but nothing is wrong while the copy is there.
    good = xception_legacy(folder / NOTOP.fname, include_top=False)
    with_md5(monkeypatch, False, md5(good.read_bytes()))
    part = folder / f".{NOTOP.fname}.part"
    part.mkdir()
    blocker.rmdir()
    status, out, err = run("path")
    assert status == 0, out
    assert f"{part}: a folder, where a download of this file would write; unused" in out


def test_verify_good_file(run, imagenet_notop_files):
    status, out, err = run("verify", imagenet_notop_files["keras3"], "--no-top")
    assert status == 0 and err == ""
    assert out.startswith(f"ok: {imagenet_notop_files['keras3']}")
    assert "without the classifier top" in out


def test_verify_checks_the_published_md5_of_an_official_file_name(
    run, imagenet_notop_files
):
    # The test file has the official name but not the official bytes.
    status, _, err = run("verify", imagenet_notop_files["legacy"])
    assert status == 1
    assert f"expected {NOTOP.md5}" in err


def test_verify_with_explicit_hash(run, imagenet_notop_files):
    path = imagenet_notop_files["legacy"]
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    status, out, _ = run("verify", path, "--hash", digest)
    assert status == 0
    assert f"digest matches the given one: {digest}" in out


def test_verify_wrong_variant_prints_one_line_error(run, imagenet_notop_files):
    status, out, err = run("verify", imagenet_notop_files["keras3"], "--include-top")
    assert status == 1 and out == ""
    assert err.startswith("error: ") and "this file has no classifier top" in err
    assert "Leave out --include-top" in err and "include_top=" not in err
    assert "Traceback" not in err


def test_verify_a_malformed_hash_names_the_option(run_cli, imagenet_notop_files):
    status, out, err = run_cli("weights", "verify", imagenet_notop_files["keras3"],
                               "--hash", "00")
    assert status == 1 and out == ""
    assert err.startswith("error: argument --hash: must be an md5") and err.count("\n") == 1
    assert "Received: --hash 00" in err and "file_hash" not in err


def test_verify_a_photo_says_what_it_is_and_advises_no_deletion(run, kitchen_photos):
    photo = kitchen_photos[0]
    status, out, err = run("verify", photo)
    assert status == 1 and out == ""
    assert err.startswith("error: ") and err.count("\n") == 1
    assert f"{photo} is a JPEG image, not an HDF5 file" in err
    assert "pass an Xception weights file instead" in err
    assert "Delete" not in err and "delete" not in err
    assert photo.exists()


def test_a_damaged_file_in_the_cache_is_the_one_advised_to_be_deleted(
    run, keras_home, tmp_path
):
    damaged = h5_bytes()[:50_000]
    mine = tmp_path / "mine.h5"
    mine.write_bytes(damaged)
    cached = keras_home / "models" / "mine.h5"
    cached.parent.mkdir()
    cached.write_bytes(damaged)
    _, _, err = run("verify", mine)
    assert "truncated" in err and "delete" not in err.lower()
    _, _, err = run("verify", cached)
    assert "truncated" in err and "It is in the weights cache: delete it" in err


def test_verify_html_file(run, tmp_path):
    page = tmp_path / "w.h5"
    page.write_text("<html><body>Please log in</body></html>")
    status, _, err = run("verify", page)
    assert status == 1 and "an HTML page" in err


def test_download_offline_fails_naming_file_and_url(run, keras_home):
    status, out, err = run("download", "--all")
    assert status == 1 and out == ""
    assert "KERAS_XCEPTION_OFFLINE=1" in err and TOP.urls[0] in err


def test_download_from_mirror(run, online, monkeypatch, tmp_path):
    body = xception_legacy(tmp_path / "src.h5", include_top=False).read_bytes()
    with_md5(monkeypatch, False, md5(body))
    with Server() as server:
        server.add(NOTOP.fname, body)
        monkeypatch.setenv("KERAS_XCEPTION_WEIGHTS_URL", server.base)
        status, out, err = run("download", "--no-top", "--no-progress")
    assert status == 0, err
    assert out.strip() == str(online / NOTOP.fname)
    assert (online / NOTOP.fname).read_bytes() == body


def test_download_hash_mismatch_exits_1(run, online, monkeypatch):
    with Server() as server:
        server.add(TOP.fname, h5_bytes())
        monkeypatch.setenv("KERAS_XCEPTION_WEIGHTS_URL", server.base)
        status, out, err = run("download", "--no-progress")  # Default: --include-top.
    assert status == 1
    assert f"expected {TOP.md5}" in err and md5(h5_bytes()) in err
    assert not (online / TOP.fname).exists()


def test_variant_flags_are_exclusive(run, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run("download", "--no-top", "--all")
    assert exit_info.value.code != 0
    assert "not allowed with argument" in capsys.readouterr().err


def test_weights_command_imports_neither_keras_nor_tensorflow():
    code = (
        "import sys; from keras_xception.cli import weights, main;"
        "import keras_xception.weights.validate, keras_xception.weights.cache_entry;"
        "print(sorted(m for m in ('keras', 'tensorflow') if m in sys.modules))"
    )
    root = pathlib.Path(__file__).resolve().parents[1]
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(root)},
        check=True,
    )
    assert result.stdout.strip() == "[]"


def test_download_reports_progress_on_stderr_and_only_the_path_on_stdout(
    run, online, monkeypatch, tmp_path
):
    body = xception_legacy(tmp_path / "src.h5", include_top=False).read_bytes()
    with_md5(monkeypatch, False, md5(body))
    with Server() as server:
        server.add(NOTOP.fname, body)
        monkeypatch.setenv("KERAS_XCEPTION_WEIGHTS_URL", server.base)
        status, out, err = run("download", "--no-top")
    assert status == 0, err
    assert out == f"{online / NOTOP.fname}\n"
    assert f"Downloading {server.url(NOTOP.fname)}" in err and "100%" in err


def test_download_without_network_fails_at_once_with_one_line(run, online, monkeypatch):
    monkeypatch.setenv("KERAS_XCEPTION_WEIGHTS_URL", "http://nonexistent.invalid/w/")
    clock = FakeClock()
    monkeypatch.setattr(transfer, "CLOCK", clock)
    status, out, err = run("download", "--no-top")
    assert clock.sleeps == []  # Not retried: no backoff.
    assert status == 1 and out == ""
    assert err.startswith("error: ") and err.count("\n") == 1
    assert NOTOP.fname in err and "cannot be resolved" in err
    for way_out in (
        "pass the path of a local weights file instead of 'imagenet'",
        "KERAS_XCEPTION_WEIGHTS_URL",
        "KERAS_XCEPTION_OFFLINE=1",
    ):
        assert way_out in err
    assert "--weights" not in err  # `weights download` has no such option.


def test_download_into_a_cache_dir_under_a_file_fails_before_any_request(
    run, online, monkeypatch, tmp_path
):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with Server() as server:
        server.add(NOTOP.fname, h5_bytes())
        monkeypatch.setenv("KERAS_XCEPTION_WEIGHTS_URL", server.base)
        status, out, err = run("download", "--no-top", "--cache-dir", blocker / "cache")
        assert server.requests == []
    assert status == 1 and out == ""
    assert err.startswith("error: ") and err.count("\n") == 1
    assert "--cache-dir" in err and f"{str(blocker)!r} is a file" in err


def test_verify_a_fifo_fails_with_one_line_without_reading_it(run, tmp_path):
    fifo = tmp_path / "weights.h5"
    os.mkfifo(fifo)
    status, out, err = run("verify", fifo)
    assert status == 1 and out == ""
    assert err == f"error: {fifo} is not a regular file (a FIFO); pass the path of an HDF5 weights file (`.h5` or `.weights.h5`).\n"


def test_download_offline_names_the_three_ways_out_on_one_line(run, keras_home):
    status, out, err = run("download", "--no-top")
    assert status == 1 and out == ""
    assert err.startswith("error: ") and err.count("\n") == 1
    assert NOTOP.fname in err and str(keras_home / "models" / NOTOP.fname) in err
    for way_out in (
        "pass the path of a local weights file instead of 'imagenet'",
        "KERAS_XCEPTION_WEIGHTS_URL",
        "KERAS_XCEPTION_OFFLINE=1",
    ):
        assert way_out in err
    assert "--weights" not in err  # `weights download` has no such option.


def test_path_with_keras_home_a_file_fails_with_one_line(run, monkeypatch, tmp_path):
    home = tmp_path / "home"
    home.write_text("a file")
    monkeypatch.setenv("KERAS_HOME", str(home))
    status, out, err = run("path")
    assert status == 1 and out == ""
    assert err.startswith("error: ") and err.count("\n") == 1
    assert f"{home} is a file, not a folder" in err
