"""`keras_xception.fileio`: atomic publishing, and cancelling it."""

import pytest

from keras_xception import fileio


@pytest.fixture
def cancelled():
    fileio.cancel_event.set()
    yield
    fileio.cancel_event.clear()


def test_write_text_publishes_the_whole_file(tmp_path):
    fileio.write_text(tmp_path / "out.txt", "a result")
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]
    assert (tmp_path / "out.txt").read_text() == "a result"


def test_once_cancelled_nothing_is_published(tmp_path, cancelled):
    (tmp_path / "kept.txt").write_text("before")
    with pytest.raises(KeyboardInterrupt):
        fileio.write_text(tmp_path / "new.txt", "a result")
    with pytest.raises(KeyboardInterrupt):
        fileio.write_text(tmp_path / "kept.txt", "after")
    with pytest.raises(KeyboardInterrupt):
        with fileio.atomic_path(tmp_path / "folder", directory=True) as tmp:
            (tmp / "part").write_text("x")
    # No final path, no temporary left behind, the old file untouched.
    assert [p.name for p in tmp_path.iterdir()] == ["kept.txt"]
    assert (tmp_path / "kept.txt").read_text() == "before"


def test_an_output_where_the_file_system_creates_nothing_is_refused_up_front(monkeypatch):
    # /proc passes root's permission check; only creating a file there
    # fails, which a command would otherwise learn at the end of its work.
    # (The permission check is passed here as root passes it, whoever runs this.)
    monkeypatch.setattr(fileio.os, "access", lambda *args, **kwargs: True)
    with pytest.raises(fileio.ConfigError,
                       match=r"--output '/proc/a/b\.keras': the file system of '/proc' "
                             r"cannot hold files"):
        fileio.check_parent("/proc/a/b.keras", what="--output")


def test_checking_an_output_leaves_an_ordinary_folder_as_it_was(tmp_path):
    (tmp_path / "kept.txt").write_text("x")
    before = tmp_path.stat().st_mtime_ns
    assert fileio.check_parent(tmp_path / "new" / "m.keras") == tmp_path / "new" / "m.keras"
    assert [p.name for p in tmp_path.iterdir()] == ["kept.txt"]
    assert tmp_path.stat().st_mtime_ns == before
