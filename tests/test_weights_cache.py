"""The weights cache: file modes, one file per URL, a full disk, resuming a
killed download, the rule for a damaged official file, hashing once.

Every URL is on the local fault-injecting server (tests/weights_server.py).
"""

from __future__ import annotations

import builtins
import dataclasses
import errno
import hashlib
import io
import json
import os
import pathlib
import signal
import stat
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from keras_xception import Xception
from keras_xception.weights import (
    CachedFileWarning,
    WeightsError,
    download,
    fetch,
    integrity,
    registry,
    resolve,
    verify,
)
from keras_xception.weights import cache as cache_lib
from keras_xception.weights.progress import Progress
from tests.test_weights_download import (  # noqa: F401 (fixtures)
    FNAME,
    cache,
    clock,
    get,
    leftovers,
    payload,
    server,
)
from tests.weights_files import h5_bytes, md5

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_cached_files_are_0644_and_folders_0755(server, cache, payload, umask_022):
    path = get(server.add(FNAME, payload), payload)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert stat.S_IMODE(cache.stat().st_mode) == 0o755
    assert stat.S_IMODE(cache.parent.stat().st_mode) == 0o755


def test_two_urls_ending_in_the_same_name_get_separate_files(server, cache):
    first, second = h5_bytes(seed=1), h5_bytes(seed=2)
    a = server.add("a/model.weights.h5", first)
    b = server.add("b/model.weights.h5", second)
    path_a = download(a, progress=False)
    path_b = download(b, progress=False)
    assert path_a != path_b
    assert path_a.read_bytes() == first and path_b.read_bytes() == second
    # The name keeps its suffixes (Keras wants `.weights.h5`).
    assert path_a.name.startswith("model-") and path_a.name.endswith(".weights.h5")
    assert download(a, progress=False) == path_a  # Cached: no second request.
    assert len(server.hits("a/model.weights.h5")) == 1


def test_an_official_url_is_cached_under_the_official_name(cache, monkeypatch):
    entry = registry.get(include_top=False)
    body = h5_bytes()
    monkeypatch.setattr(
        registry,
        "WEIGHTS",
        tuple(
            dataclasses.replace(e, md5=md5(body)) if e is entry else e
            for e in registry.WEIGHTS
        ),
    )
    monkeypatch.setenv("KERAS_XCEPTION_OFFLINE", "1")
    cache.mkdir(parents=True)
    (cache / entry.fname).write_bytes(body)
    assert download(entry.urls[0], progress=False) == cache / entry.fname


def test_explicit_fname_wins(server, cache, payload):
    url = server.add("x/model.h5", payload)
    assert download(url, fname="mine.h5", progress=False) == cache / "mine.h5"


# A full disk.


class _FillingFile:
    """A file object whose writes fail with ENOSPC after `room` bytes."""

    def __init__(self, real, room):
        self._real = real
        self._room = room

    def write(self, data):
        if len(data) > self._room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self._room -= len(data)
        return self._real.write(data)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._real.close()

    def __getattr__(self, name):
        return getattr(self._real, name)


@pytest.fixture
def disk_with_room(monkeypatch):
    """Makes writes to a download's partial file fail after `room` bytes."""

    def install(room):
        real_open = builtins.open

        def filling_open(file, mode="r", *args, **kwargs):
            f = real_open(file, mode, *args, **kwargs)
            partial = isinstance(file, int) or str(file).endswith(".part")
            if partial and ("+" in mode or "w" in mode):
                return _FillingFile(f, room)
            return f

        monkeypatch.setattr(builtins, "open", filling_open)
        monkeypatch.setattr(io, "open", filling_open)  # os.fdopen opens through io.

    return install


def test_disk_full_is_reported_as_such_and_leaves_nothing(
    server, cache, payload, disk_with_room
):
    url = server.add(FNAME, payload)
    disk_with_room(100_000)
    with pytest.raises(WeightsError) as err:
        get(url, payload)
    message = str(err.value)
    assert message.startswith("Disk full")
    assert str(cache / FNAME) in message and f"{len(payload):,} bytes" in message
    assert len(server.hits(FNAME)) == 1  # Not retried as a network error.
    assert leftovers(cache) == []


# Resuming in the next process.


@pytest.mark.slow
def test_a_killed_download_is_resumed_by_the_next_call(server, cache, tmp_path):
    body = h5_bytes(size=2_000_000)
    url = server.add(FNAME, body, chunk_delay=0.05)  # About 1.5 s in all.
    script = textwrap.dedent(
        f"""
        from keras_xception.weights import download
        download({url!r}, fname={FNAME!r}, progress=False)
        """
    )
    child = subprocess.Popen(
        [sys.executable, "-c", script],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            parts = list(cache.glob(f".{FNAME}*part")) if cache.exists() else []
            if parts and parts[0].stat().st_size >= 300_000:
                break
            assert child.poll() is None, child.stderr.read()
            time.sleep(0.01)
        else:
            pytest.fail("the download never started")
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
        child.stderr.close()
    (part,) = cache.glob(f".{FNAME}*part")
    kept = part.stat().st_size
    assert 0 < kept < len(body)
    assert not (cache / FNAME).exists()

    report = io.StringIO()
    path = download(url, fname=FNAME, file_hash=md5(body), progress=report)
    assert path.read_bytes() == body
    assert f"Resuming {url} at byte {kept:,}" in report.getvalue()
    assert "100%" in report.getvalue()
    last = server.hits(FNAME)[-1]
    assert last["Range"] == f"bytes={kept}-"
    assert last["If-Range"] == '"' + md5(body) + '"'
    assert leftovers(cache) == [FNAME]


def _leave_part(cache, url, old):
    """A partial download of `old` at `url`, as a killed process leaves it."""
    cache.mkdir(parents=True, exist_ok=True)
    (cache / f".{FNAME}.part").write_bytes(old[:100_000])
    etag = '"' + md5(old) + '"'
    meta = {"url": url, "etag": etag, "last_modified": "", "validator": etag,
            "length": len(old)}
    (cache / f".{FNAME}.part.json").write_text(json.dumps(meta))


def test_a_part_of_a_file_the_server_has_changed_is_not_used(server, cache, payload):
    old = h5_bytes(seed=1)
    url = server.add(FNAME, payload)
    _leave_part(cache, url, old)
    assert get(url, payload).read_bytes() == payload
    (request,) = server.hits(FNAME)
    assert request["Range"] == "bytes=100000-"  # Asked to resume, if unchanged;
    assert request["If-Range"] == '"' + md5(old) + '"'  # the server sent all.
    assert leftovers(cache) == [FNAME]


def test_a_resumed_file_that_fails_its_check_is_downloaded_again(
    server, cache, payload
):
    old = h5_bytes(seed=1)
    assert len(old) == len(payload)
    url = server.add(FNAME, payload, honor_if_range=False)  # Resumes anything.
    _leave_part(cache, url, old)
    assert get(url, payload).read_bytes() == payload
    first, second = server.hits(FNAME)
    assert first["Range"] == "bytes=100000-" and "Range" not in second
    assert leftovers(cache) == [FNAME]


def test_a_part_without_a_validator_is_not_resumed(server, cache, payload):
    url = server.add(FNAME, payload)
    _leave_part(cache, url, payload)
    meta = cache / f".{FNAME}.part.json"
    meta.write_text(json.dumps({"url": url, "validator": "", "length": len(payload)}))
    assert get(url, payload).read_bytes() == payload
    assert "Range" not in server.hits(FNAME)[0]


# A cached official file that fails its md5.


@pytest.fixture
def official(cache, monkeypatch, payload):
    """The no-top entry, its md5 made the payload's, served by a mirror."""
    entry = registry.get(include_top=False)
    monkeypatch.setattr(
        registry,
        "WEIGHTS",
        tuple(
            dataclasses.replace(e, md5=md5(payload)) if e is entry else e
            for e in registry.WEIGHTS
        ),
    )
    return registry.get(include_top=False)


def test_a_cached_official_file_failing_its_md5_is_moved_aside_and_replaced(
    server, cache, payload, official, monkeypatch
):
    damaged = h5_bytes(seed=3)
    cache.mkdir(parents=True)
    (cache / official.fname).write_bytes(damaged)
    server.add(official.fname, payload)
    monkeypatch.setenv("KERAS_XCEPTION_WEIGHTS_URL", server.base)
    with pytest.warns(CachedFileWarning, match="moved to .*rejected") as caught:
        path = fetch(include_top=False, progress=False)
    assert md5(damaged) in str(caught[0].message)
    assert path.read_bytes() == payload
    assert (cache / f"{official.fname}.rejected").read_bytes() == damaged


def test_offline_a_cached_official_file_failing_its_md5_is_an_error(
    cache, payload, official, monkeypatch
):
    cache.mkdir(parents=True)
    (cache / official.fname).write_bytes(h5_bytes(seed=3))
    monkeypatch.setenv("KERAS_XCEPTION_OFFLINE", "1")
    with pytest.raises(WeightsError, match="unusable") as err:
        fetch(include_top=False, progress=False)
    assert md5(h5_bytes(seed=3)) in str(err.value)
    assert (cache / official.fname).exists()  # Offline, nothing is moved.


# Hashing once per content.


@pytest.fixture
def hash_count(monkeypatch):
    """Counts the digests integrity computes (one per algorithm per read)."""
    count = []
    real = hashlib.new

    class Counting:
        def __getattr__(self, name):
            return getattr(hashlib, name)

        @staticmethod
        def new(name, *args, **kwargs):
            count.append(name)
            return real(name, *args, **kwargs)

    monkeypatch.setattr(integrity, "hashlib", Counting())
    return count


def test_a_verified_file_is_not_hashed_again_until_it_changes(
    cache, payload, official, monkeypatch, hash_count
):
    monkeypatch.setenv("KERAS_XCEPTION_OFFLINE", "1")
    cache.mkdir(parents=True)
    path = cache / official.fname
    path.write_bytes(payload)
    assert fetch(include_top=False, progress=False) == path
    hashed = len(hash_count)
    assert hashed >= 1
    assert fetch(include_top=False, progress=False) == path
    assert len(hash_count) == hashed  # Not read again.
    record = json.loads((cache / f".{official.fname}.verified").read_text())
    assert record["md5"] == md5(payload)
    assert record["sha256"] == hashlib.sha256(payload).hexdigest()

    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # touch
    assert fetch(include_top=False, progress=False) == path
    assert len(hash_count) > hashed


def test_a_file_rewritten_with_other_bytes_is_hashed_and_refused(
    cache, payload, official, monkeypatch
):
    monkeypatch.setenv("KERAS_XCEPTION_OFFLINE", "1")
    cache.mkdir(parents=True)
    path = cache / official.fname
    path.write_bytes(payload)
    fetch(include_top=False, progress=False)
    other = h5_bytes(seed=4)
    assert len(other) == len(payload)
    st = path.stat()
    path.write_bytes(other)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # Same size and mtime.
    with pytest.raises(WeightsError, match="unusable"):
        fetch(include_top=False, progress=False)


def test_a_downloaded_file_is_not_hashed_again_on_first_use(
    server, cache, payload, official, monkeypatch, hash_count
):
    server.add(official.fname, payload)
    monkeypatch.setenv("KERAS_XCEPTION_WEIGHTS_URL", server.base)
    path = fetch(include_top=False, progress=False)
    monkeypatch.setattr(integrity, "hashlib", None)  # Any hashing would fail.
    assert fetch(include_top=False, progress=False) == path


def test_a_file_larger_than_the_free_space_fails_before_writing(
    server, cache, payload, monkeypatch
):
    import shutil

    url = server.add(FNAME, payload)
    usage = shutil.disk_usage("/")
    monkeypatch.setattr(
        shutil, "disk_usage", lambda path: usage._replace(free=1000)
    )
    with pytest.raises(WeightsError, match="Disk full") as err:
        get(url, payload)
    assert f"needs {len(payload):,} bytes and 1,000 bytes are free" in str(err.value)
    assert leftovers(cache) == []


# A damaged cache is reported before any network traffic.


@pytest.mark.parametrize(
    "name", [FNAME, f"{FNAME}.lock", f".{FNAME}.part", f".{FNAME}.part.json"]
)
def test_a_folder_where_the_cache_keeps_a_file_fails_before_any_request(
    server, cache, payload, name
):
    url = server.add(FNAME, payload)
    (cache / name).mkdir(parents=True)
    with pytest.raises(WeightsError) as err:
        download(url, file_hash=md5(payload), fname=FNAME, progress=False)
    message = str(err.value)
    assert "\n" not in message
    assert f"{cache / name} is a folder" in message and "remove it" in message
    assert server.requests == []


def test_a_fifo_at_the_cached_name_fails_before_any_request(server, cache, payload):
    url = server.add(FNAME, payload)
    cache.mkdir(parents=True)
    os.mkfifo(cache / FNAME)
    with pytest.raises(WeightsError, match=r"is a FIFO, where the cache keeps"):
        download(url, file_hash=md5(payload), fname=FNAME, progress=False)
    assert server.requests == []


@pytest.mark.parametrize("blocked", ["home", "models"])
def test_a_file_in_place_of_the_cache_folder_is_an_error_not_a_fallback(
    server, cache, payload, monkeypatch, blocked
):
    url = server.add(FNAME, payload)
    home = cache.parent
    if blocked == "home":
        home.write_text("a file")
        in_the_way = home
    else:
        home.mkdir()
        cache.write_text("a file")
        in_the_way = cache
    with pytest.raises(WeightsError) as err:
        download(url, file_hash=md5(payload), fname=FNAME, progress=False)
    message = str(err.value)
    assert "\n" not in message
    assert f"{in_the_way} is a file, not a folder" in message
    assert f"KERAS_HOME={str(home)!r}" in message
    assert server.requests == []


def test_a_read_only_cache_folder_still_falls_back_to_tmp(cache, monkeypatch):
    cache.mkdir(parents=True)
    real = os.access
    monkeypatch.setattr(  # Read-only for everyone, root included.
        os, "access", lambda path, mode: False if path == cache else real(path, mode)
    )
    assert cache_lib.cache_dirs() == (cache, pathlib.Path("/tmp/.keras/models"))


# A path that is not a regular file is never opened.


class Fifo:
    """A FIFO where a weights file is expected, and whether anything opened it.

    A thread tries every half second to open it for writing without
    blocking, which succeeds only while something holds it open to read:
    that reader then finds a writer (and at once the end of the file)
    instead of waiting for one forever, and `opened` records it.
    """

    def __init__(self, path):
        self.path, self.opened, self._done = path, [], threading.Event()
        os.mkfifo(path)
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _watch(self):
        while not self._done.wait(0.5):
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_NONBLOCK)
            except OSError:  # ENXIO: nothing holds it open to read.
                continue
            self.opened.append(True)
            os.close(fd)

    def stop(self):
        self._done.set()
        self._thread.join()


@pytest.fixture
def fifo(tmp_path):
    watched = Fifo(tmp_path / "weights.h5")
    yield watched
    watched.stop()


def test_resolve_and_verify_refuse_a_fifo_without_opening_it(fifo):
    for call in (
        lambda: resolve(str(fifo.path), include_top=False),
        lambda: verify(fifo.path),
        lambda: integrity.content_problem(fifo.path),
    ):
        with pytest.raises(WeightsError) as err:
            call()
        assert str(err.value).startswith(f"{fifo.path} is not a regular file (a FIFO)")
    assert not fifo.opened


def test_xception_with_a_fifo_as_weights_fails_promptly(fifo):
    with pytest.raises(WeightsError, match=r"is not a regular file \(a FIFO\)"):
        Xception(weights=str(fifo.path), include_top=False, input_shape=(71, 71, 3))
    assert not fifo.opened


def test_progress_after_a_resume_gives_the_percentage_of_the_bytes_shown():
    stream = io.StringIO()
    report = Progress(stream)
    report.start(1_000_000)  # As on resuming at byte 550,000.
    for done in (550_000, 700_000, 1_000_000):
        report.update(done)
    assert stream.getvalue().splitlines() == [
        "  55% (0.6 MB of 1.0 MB)",
        "  70% (0.7 MB of 1.0 MB)",
        "  100% (1.0 MB of 1.0 MB)",
    ]
