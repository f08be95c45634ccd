"""The downloader against a real local HTTP server that injects faults.

Nothing here touches the network: every URL is on 127.0.0.1, the cache is a
temporary folder, and proxies are bypassed for the local server.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import pathlib
import re
import socket
import subprocess
import sys
import textwrap
import time

import pytest

from keras_xception.weights import (
    CachedFileWarning,
    WeightsError,
    download,
    fetch,
    registry,
    resolve,
)
from tests.weights_files import h5_bytes, md5
from keras_xception.weights import transfer
from tests.weights_server import Cut, FakeClock, Server, Stall, Status

FNAME = "payload.h5"


@pytest.fixture
def payload():
    return h5_bytes()


@pytest.fixture
def clock(monkeypatch):
    """The downloader's clock, replaced: backoffs are recorded, not waited."""
    fake = FakeClock()
    monkeypatch.setattr(transfer, "CLOCK", fake)
    return fake


@pytest.fixture
def server(monkeypatch, clock):
    for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    with Server(clock=clock) as running:
        yield running


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A private KERAS_HOME with the network allowed; returns its models folder."""
    home = tmp_path / "keras_home"
    monkeypatch.setenv("KERAS_HOME", str(home))
    monkeypatch.delenv("KERAS_XCEPTION_OFFLINE", raising=False)
    monkeypatch.delenv("KERAS_XCEPTION_WEIGHTS_URL", raising=False)
    return home / "models"


def leftovers(folder: pathlib.Path) -> list[str]:
    """Files in the cache folder other than lock files and digest records."""
    if not folder.exists():
        return []
    return sorted(
        p.name
        for p in folder.iterdir()
        if not p.name.endswith((".lock", ".verified"))
    )


def get(url, data, **kwargs):
    kwargs.setdefault("progress", False)
    kwargs.setdefault("fname", FNAME)
    return download(url, file_hash=md5(data), **kwargs)


# Retries and resuming.


@pytest.mark.parametrize("status", [503, 429])
def test_retries_with_backoff_after_503_or_429(server, cache, payload, status, clock):
    url = server.add(FNAME, payload, faults=[Status(status), Status(status)])
    path = get(url, payload)
    assert path == cache / FNAME
    assert path.read_bytes() == payload
    assert len(server.hits(FNAME)) == 3
    assert clock.sleeps == [0.5, 1.0]  # Waited 0.5 s, then 1 s.
    assert leftovers(cache) == [FNAME]


def test_gives_up_after_retries_naming_the_status(server, cache, payload):
    url = server.add(FNAME, payload, faults=[Status(503)] * 3)
    with pytest.raises(WeightsError, match=r"HTTP 503.*after 2 attempts") as err:
        get(url, payload, retries=1)
    assert url in str(err.value)
    assert len(server.hits(FNAME)) == 2


def test_connection_cut_mid_body_resumes_with_range(server, cache, payload):
    url = server.add(FNAME, payload, faults=[Cut(100_000)])
    path = get(url, payload, retries=0)  # Resuming does not use up a retry.
    assert path.read_bytes() == payload
    first, second = server.hits(FNAME)
    assert "Range" not in first
    assert second["Range"] == "bytes=100000-"
    assert leftovers(cache) == [FNAME]


def test_server_that_ignores_range_is_downloaded_again_from_the_start(
    server, cache, payload
):
    url = server.add(FNAME, payload, faults=[Cut(100_000)], honor_range=False)
    path = get(url, payload)
    assert path.read_bytes() == payload
    assert server.hits(FNAME)[1]["Range"] == "bytes=100000-"


def test_stalled_server_raises_after_one_timeout(server, cache, payload, clock):
    url = server.add(FNAME, payload, faults=[Stall()])
    with pytest.raises(WeightsError, match=r"no data for 0\.3 s \(timed out\)"):
        get(url, payload, timeout=0.3, retries=0)
    assert clock.sleeps == [] and len(server.hits(FNAME)) == 1
    assert leftovers(cache) == []


def test_stall_then_success_on_retry(server, cache, payload, clock):
    url = server.add(FNAME, payload, faults=[Stall()])
    path = get(url, payload, timeout=0.3, retries=1)
    assert path.read_bytes() == payload
    assert clock.sleeps == [0.5]


# Clear errors.


def test_html_page_says_so(server, cache, payload):
    page = b"<!DOCTYPE html>\n<html><body><form>Sign in</form></body></html>"
    url = server.add(FNAME, page, content_type="text/html")
    with pytest.raises(WeightsError, match="HTML page came back") as err:
        download(url, cache_dir=cache.parent, progress=False, fname=FNAME)
    assert "login or proxy page" in str(err.value)
    assert leftovers(cache) == []


@pytest.mark.parametrize("status", [404, 403])
def test_404_and_403_name_the_url_and_status_without_retrying(server, cache, status):
    url = server.url("missing.h5")
    if status == 403:
        server.add("missing.h5", b"", faults=[Status(403)])
    with pytest.raises(WeightsError, match=f"HTTP {status}") as err:
        download(url, progress=False)
    assert url in str(err.value)
    assert len(server.hits("missing.h5")) == 1
    assert leftovers(cache) == []


def test_wrong_hash_gives_both_digests_and_keeps_nothing(server, cache, payload):
    url = server.add(FNAME, payload)
    expected = "0" * 32
    with pytest.raises(WeightsError) as err:
        download(url, file_hash=expected, progress=False)
    message = str(err.value)
    assert expected in message and md5(payload) in message
    assert "Try again" in message
    assert leftovers(cache) == []


def test_sha256_is_accepted(server, cache, payload):
    url = server.add(FNAME, payload)
    path = download(url, file_hash=hashlib.sha256(payload).hexdigest(), progress=False)
    assert path.read_bytes() == payload


def test_malformed_hash_is_rejected_before_any_request(server, cache, payload):
    url = server.add(FNAME, payload)
    with pytest.raises(WeightsError, match="md5 .* or sha256"):
        download(url, file_hash="abc", progress=False)
    assert server.requests == []


FAILURES = {
    "404": dict(path="absent.h5"),
    "html": dict(body=b"<html><body>proxy login</body></html>"),
    "not hdf5": dict(body=b"just some bytes, no HDF5 signature" * 10),
    "wrong hash": dict(file_hash="f" * 32),
    "stall": dict(faults=[Stall()]),
    "503 forever": dict(faults=[Status(503)] * 5),
    "cut, then 500": dict(faults=[Cut(50_000), Status(500)], keeps_part=True),
}


@pytest.mark.parametrize("failure", sorted(FAILURES))
def test_nothing_is_left_at_the_final_path_after_a_failure(
    server, cache, payload, failure
):
    spec = FAILURES[failure]
    body = spec.get("body", payload)
    url = server.add(FNAME, body, faults=spec.get("faults", ()))
    if "path" in spec:
        url = server.url(spec["path"])
    with pytest.raises(WeightsError):
        download(
            url,
            fname=FNAME,
            file_hash=spec.get("file_hash", md5(body)),
            timeout=1,
            retries=0,
            progress=False,
        )
    assert not (cache / FNAME).exists()
    # Only a network failure after some bytes arrived keeps them, for resuming.
    kept = [f".{FNAME}.part", f".{FNAME}.part.json"] if spec.get("keeps_part") else []
    assert leftovers(cache) == kept


# The cache.


def test_cached_file_is_used_without_touching_the_network(server, cache, payload):
    url = server.add(FNAME, payload)
    first = get(url, payload)
    server.close()
    assert get(url, payload) == first
    assert len(server.hits(FNAME)) == 1


def test_cached_file_with_a_wrong_hash_is_reported_and_downloaded_again(
    server, cache, payload
):
    cache.mkdir(parents=True)
    (cache / FNAME).write_bytes(h5_bytes(seed=1))
    url = server.add(FNAME, payload)
    with pytest.warns(CachedFileWarning, match=md5(payload)):
        path = get(url, payload)
    assert path.read_bytes() == payload


def test_truncated_cached_file_without_hash_is_downloaded_again(server, cache, payload):
    cache.mkdir(parents=True)
    (cache / FNAME).write_bytes(payload[: len(payload) // 2])
    url = server.add(FNAME, payload)
    with pytest.warns(CachedFileWarning, match="truncated"):
        path = download(url, progress=False, fname=FNAME)
    assert path.read_bytes() == payload


def test_cache_dir_argument_uses_its_models_subfolder(server, tmp_path, payload):
    url = server.add(FNAME, payload)
    path = get(url, payload, cache_dir=tmp_path / "base")
    assert path == tmp_path / "base" / "models" / FNAME


def test_progress_off_prints_nothing(server, cache, payload, capsys):
    get(server.add(FNAME, payload), payload, progress=False)
    assert capsys.readouterr() == ("", "")


def test_progress_bar_shows_bytes(server, cache, payload, capsys):
    get(server.add(FNAME, payload), payload, progress=True)
    out = capsys.readouterr().out
    assert f"{len(payload)}/{len(payload)}" in out


@pytest.mark.slow
def test_four_processes_end_with_one_verified_file(server, cache, tmp_path):
    payload = h5_bytes(size=2_000_000)
    # Served slowly (about 1 s), so that the four downloads overlap. Its own
    # server, on the real clock: the fake one (`server`) moves only when
    # this process's downloader reads it, and these downloaders are others.
    real_time = Server()
    url = real_time.add(FNAME, payload, chunk_delay=0.03)
    go = tmp_path / "go"
    script = textwrap.dedent(
        f"""
        import os, pathlib, sys, time
        from keras_xception.weights import download
        pathlib.Path(sys.argv[1]).touch()
        while not os.path.exists({str(go)!r}):
            time.sleep(0.01)
        print(download({url!r}, file_hash={md5(payload)!r}, fname={FNAME!r}, progress=False))
        """
    )
    root = pathlib.Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root)}
    ready = [tmp_path / f"ready{i}" for i in range(4)]
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", script, str(flag)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for flag in ready
    ]
    deadline = time.monotonic() + 30
    while not all(flag.exists() for flag in ready) and time.monotonic() < deadline:
        time.sleep(0.02)
    go.touch()
    try:
        results = [worker.communicate(timeout=60) for worker in workers]
    finally:
        real_time.close()
    for worker, (out, err) in zip(workers, results):
        assert worker.returncode == 0, err
        assert out.strip() == str(cache / FNAME)
    assert (cache / FNAME).read_bytes() == payload
    assert leftovers(cache) == [FNAME]
    assert len(real_time.hits(FNAME)) == 1  # The others waited for the lock.


# Offline mode and the mirror.


@pytest.fixture
def offline(cache, monkeypatch):
    monkeypatch.setenv("KERAS_XCEPTION_OFFLINE", "1")
    return cache


def test_offline_with_empty_cache_fails_at_once_naming_file_path_and_url(
    server, offline, payload
):
    url = server.add(FNAME, payload)
    with pytest.raises(WeightsError) as err:
        get(url, payload)
    message = str(err.value)
    assert "KERAS_XCEPTION_OFFLINE=1" in message
    assert str(offline / FNAME) in message and url in message
    assert server.requests == []


def test_offline_with_a_bad_cached_file_fails_instead_of_using_it(
    server, offline, payload
):
    offline.mkdir(parents=True)
    (offline / FNAME).write_bytes(h5_bytes(seed=1))
    url = server.add(FNAME, payload)
    with pytest.raises(WeightsError, match="unusable") as err:
        get(url, payload)
    assert md5(payload) in str(err.value)
    assert server.requests == []


def test_offline_with_a_good_cached_file_returns_it(server, offline, payload):
    offline.mkdir(parents=True)
    (offline / FNAME).write_bytes(payload)
    assert get(server.url(FNAME), payload) == offline / FNAME


def test_offline_value_must_be_yes_or_no(server, cache, payload, monkeypatch):
    monkeypatch.setenv("KERAS_XCEPTION_OFFLINE", "maybe")
    with pytest.raises(WeightsError, match="KERAS_XCEPTION_OFFLINE must be 1"):
        get(server.url(FNAME), payload)


def test_fetch_from_mirror_rejects_a_file_that_fails_the_registry_md5(
    server, cache, payload, monkeypatch
):
    entry = registry.get(include_top=False)
    server.add(entry.fname, payload)
    monkeypatch.setenv("KERAS_XCEPTION_WEIGHTS_URL", server.base)
    with pytest.raises(WeightsError) as err:
        fetch(include_top=False, progress=False)
    message = str(err.value)
    assert entry.md5 in message and md5(payload) in message
    assert server.hits(entry.fname)  # The mirror was used, not the official URL.
    assert leftovers(cache) == []


@pytest.fixture
def registry_matching(monkeypatch, payload):
    """The registry, with the no-top entry's md5 replaced by the payload's."""
    entries = tuple(
        dataclasses.replace(e, md5=md5(payload)) if not e.include_top else e
        for e in registry.WEIGHTS
    )
    monkeypatch.setattr(registry, "WEIGHTS", entries)
    return registry.get(include_top=False)


def test_fetch_downloads_from_the_mirror_into_the_keras_cache(
    server, cache, payload, registry_matching, monkeypatch
):
    server.add(registry_matching.fname, payload)
    monkeypatch.setenv("KERAS_XCEPTION_WEIGHTS_URL", server.base)
    path = fetch(include_top=False, progress=False)
    assert path == cache / registry_matching.fname
    assert path.read_bytes() == payload
    assert fetch(include_top=False, progress=False) == path
    assert len(server.hits(registry_matching.fname)) == 1


def test_fetch_offline_names_the_official_url(offline):
    entry = registry.get(include_top=True)
    with pytest.raises(WeightsError) as err:
        fetch(include_top=True, progress=False)
    assert entry.urls[0] in str(err.value)
    assert str(offline / entry.fname) in str(err.value)


def test_fetch_tries_the_next_url_and_reports_each(
    server, cache, payload, registry_matching, monkeypatch
):
    first, second = (
        server.url("gone/" + registry_matching.fname),
        server.url("ok/" + registry_matching.fname),
    )
    server.add("ok/" + registry_matching.fname, payload)
    entries = tuple(
        dataclasses.replace(e, urls=(first, second)) if e is registry_matching else e
        for e in registry.WEIGHTS
    )
    monkeypatch.setattr(registry, "WEIGHTS", entries)
    assert fetch(include_top=False, progress=False).read_bytes() == payload
    monkeypatch.setattr(
        registry,
        "WEIGHTS",
        tuple(dataclasses.replace(e, urls=(first, first)) for e in entries),
    )
    (cache / registry_matching.fname).unlink()
    with pytest.raises(WeightsError, match="any of its 2 URLs") as err:
        fetch(include_top=False, progress=False)
    assert str(err.value).count("HTTP 404") == 2
    assert "\n" not in str(err.value)


def test_mirror_must_be_an_http_url(cache, monkeypatch):
    monkeypatch.setenv("KERAS_XCEPTION_WEIGHTS_URL", "/srv/weights")
    with pytest.raises(WeightsError, match="KERAS_XCEPTION_WEIGHTS_URL must be"):
        fetch(include_top=False, progress=False)


def test_registry_parameter_counts_match_the_architecture():
    from keras_xception import architecture

    for entry in registry.WEIGHTS:
        assert entry.params == architecture.count_params(entry.include_top)


def test_registry_declares_each_variant_once_with_official_and_github_urls():
    assert sorted(e.include_top for e in registry.WEIGHTS) == [False, True]
    for entry in registry.WEIGHTS:
        assert entry.urls[0].startswith("https://storage.googleapis.com/")
        assert "fchollet/deep-learning-models/releases/download/v0.4/" in entry.urls[1]
        assert all(url.endswith("/" + entry.fname) for url in entry.urls)
        assert entry.file_hash == entry.md5 and entry.sha256 is None


def test_committed_manifest_matches_the_registry():
    root = pathlib.Path(__file__).resolve().parents[1]
    manifest = (root / "weights" / "manifest.json").read_text(encoding="utf8")
    assert manifest == registry.manifest_json()
    for readme in (root / "weights" / "README.md", root / "README.md"):
        assert registry.manifest_table() in readme.read_text(encoding="utf8"), readme


# Where progress goes.


def test_progress_to_a_stream_leaves_stdout_empty(server, cache, payload, capsys):
    stream = io.StringIO()
    get(server.add(FNAME, payload), payload, progress=stream)
    assert capsys.readouterr() == ("", "")
    report = stream.getvalue()
    assert f"Downloading {server.url(FNAME)}" in report
    assert "100%" in report and "\x1b" not in report and "\r" not in report


def test_progress_to_a_stream_reports_retries_there(server, cache, payload, capsys):
    url = server.add(FNAME, payload, faults=[Status(503)])
    stream = io.StringIO()
    get(url, payload, progress=stream)
    assert capsys.readouterr() == ("", "")
    assert "HTTP 503" in stream.getvalue() and "retrying" in stream.getvalue()


def test_progress_must_be_a_bool_or_a_stream(server, cache, payload):
    url = server.add(FNAME, payload)
    with pytest.raises(WeightsError, match=r"Received: progress='stderr'"):
        get(url, payload, progress="stderr")
    assert server.requests == []


# No network: fail at once, say the way out.


@pytest.fixture
def connections(monkeypatch):
    """Counts the connections opened, by (host, port)."""
    made = []
    real = socket.create_connection

    def counting(address, *args, **kwargs):
        made.append(address)
        return real(address, *args, **kwargs)

    monkeypatch.setattr(socket, "create_connection", counting)
    return made


def closed_port() -> int:
    """A port on 127.0.0.1 with nothing listening."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unresolvable_host_fails_at_once_without_retrying(
    server, cache, connections, clock
):
    url = "http://nonexistent.invalid/weights/model.h5"
    with pytest.raises(WeightsError) as err:
        download(url, fname=FNAME, retries=3, progress=False)
    assert clock.sleeps == []  # Retrying would wait 0.5 s, 1 s and 2 s.
    assert connections == [("nonexistent.invalid", 80)]
    message = str(err.value)
    assert "\n" not in message
    assert "cannot be resolved" in message and url in message
    assert "pass the path of a local weights file instead of the URL" in message
    assert "KERAS_XCEPTION_OFFLINE=1" in message and "--weights" not in message
    assert str(cache / FNAME) in message
    assert leftovers(cache) == []


def test_refused_connection_is_not_retried(server, cache, connections):
    port = closed_port()
    with pytest.raises(WeightsError, match="refused the connection"):
        download(f"http://127.0.0.1:{port}/m.h5", retries=3, progress=False)
    assert connections == [("127.0.0.1", port)]


def test_fetch_with_no_network_names_the_file_and_the_three_ways_out(
    server, cache, connections, monkeypatch
):
    entry = registry.get(include_top=False)
    port = closed_port()
    unreachable = (
        f"http://nonexistent.invalid/{entry.fname}",
        f"http://127.0.0.1:{port}/{entry.fname}",
    )
    monkeypatch.setattr(
        registry,
        "WEIGHTS",
        tuple(dataclasses.replace(e, urls=unreachable) for e in registry.WEIGHTS),
    )
    with pytest.raises(WeightsError) as err:
        fetch(include_top=False, progress=False)
    message = str(err.value)
    assert "\n" not in message
    assert len(connections) == 2  # One attempt per URL.
    assert "none of its 2 URLs can be reached" in message
    assert entry.fname in message and str(cache / entry.fname) in message
    for way_out in (
        "pass the path of a local weights file instead of 'imagenet'",
        "KERAS_XCEPTION_WEIGHTS_URL",
        "KERAS_XCEPTION_OFFLINE=1",
    ):
        assert way_out in message
    assert "--weights" not in message  # Not every caller has that option.


# A server that trickles or keeps failing: every download ends, with one line.


def test_a_server_that_keeps_stalling_after_some_data_uses_up_the_retries(
    server, cache, payload, clock
):
    url = server.add(FNAME, payload, faults=[Stall(after=20_000)] * 10)
    with pytest.raises(WeightsError) as err:
        get(url, payload, timeout=0.3, retries=1)
    assert clock.sleeps == [0.5]  # One backoff: one retry, then it gives up.
    message = str(err.value)
    assert "\n" not in message
    assert "the server keeps stalling" in message and "2 times" in message
    assert f"40,000 of {len(payload):,} bytes received and kept" in message
    assert len(server.hits(FNAME)) == 2
    # What arrived is kept, and the next call resumes there.
    server.routes["/" + FNAME].faults.clear()
    assert get(url, payload).read_bytes() == payload
    assert server.hits(FNAME)[-1]["Range"] == "bytes=40000-"


def test_a_server_that_keeps_cutting_the_connection_is_resumed_a_bounded_number_of_times(
    server, cache, payload
):
    url = server.add(FNAME, payload, faults=[Cut(1_000)] * 100)
    with pytest.raises(WeightsError) as err:
        get(url, payload, retries=1)
    message = str(err.value)
    assert "\n" not in message
    assert "keeps cutting the connection" in message and "20 resumes" in message
    assert len(server.hits(FNAME)) == 21  # The first request and 20 resumes.
    assert f"21,000 of {len(payload):,} bytes received and kept" in message


def test_a_trickle_slower_than_the_minimum_rate_is_stopped(server, cache, clock):
    body = h5_bytes(size=16_000)  # 32 s at 500 bytes/s, on the fake clock.
    url = server.add(FNAME, body, chunk_size=50, chunk_delay=0.1)  # 500 bytes/s.
    with pytest.raises(WeightsError) as err:
        get(url, body, timeout=0.3, retries=3)  # A window of 3 s.
    message = str(err.value)
    assert "\n" not in message
    assert "the server is too slow" in message and "less than 1,000 bytes/s" in message
    window = int(re.search(r"bytes in the last (\d+) s", message)[1])
    assert 3 <= window < 10  # Stopped after a window, not at the end (32 s).
    assert len(server.hits(FNAME)) == 1 and clock.sleeps == []  # Not retried.


def test_a_slow_server_above_the_minimum_rate_is_waited_for(server, cache, clock):
    body = h5_bytes(size=60_000)  # 3 s at 20 kB/s, on the fake clock.
    url = server.add(FNAME, body, chunk_size=1_000, chunk_delay=0.05)  # 20 kB/s.
    assert get(url, body, timeout=0.1).read_bytes() == body  # Windows of 1 s.
    assert clock.time >= 2.5


# URLs are checked before any connection.


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("http://[::1/x.h5", "is not a valid URL: Invalid IPv6 URL"),
        ("http://", "names no host"),
        ("https:///x.h5", "names no host"),
        ("http://host:port/x.h5", "is not a valid URL"),
    ],
)
def test_a_malformed_url_is_refused_before_any_connection(
    cache, connections, url, words
):
    for call in (
        lambda: download(url, progress=False),
        lambda: resolve(url, include_top=False, progress=False),
    ):
        with pytest.raises(WeightsError, match=re.escape(words)) as err:
            call()
        assert repr(url) in str(err.value) and "\n" not in str(err.value)
    assert connections == []


@pytest.mark.parametrize("url", ["ftp://x/y.h5", "file:///tmp/y.h5", "s3://bucket/y.h5"])
def test_only_http_urls_are_supported(cache, connections, url):
    with pytest.raises(WeightsError) as err:
        resolve(url, include_top=False, progress=False)
    message = str(err.value)
    assert "Only http:// and https:// URLs" in message and repr(url) in message
    assert connections == []


def test_an_upper_case_scheme_is_an_http_url(server, cache, payload):
    url = server.add(FNAME, payload).replace("http://", "HTTP://")
    assert get(url, payload).read_bytes() == payload


@pytest.mark.parametrize("base", ["http://", "http://[::1/", "ftp://mirror/"])
def test_a_mirror_without_a_usable_url_is_refused(cache, monkeypatch, base):
    monkeypatch.setenv("KERAS_XCEPTION_WEIGHTS_URL", base)
    with pytest.raises(WeightsError, match="KERAS_XCEPTION_WEIGHTS_URL must be"):
        fetch(include_top=False, progress=False)


def test_offline_names_the_file_and_the_three_ways_out(offline):
    entry = registry.get(include_top=False)
    with pytest.raises(WeightsError) as err:
        fetch(include_top=False, progress=False)
    message = str(err.value)
    assert "\n" not in message
    assert entry.fname in message and str(offline / entry.fname) in message
    for way_out in (
        "pass the path of a local weights file instead of 'imagenet'",
        "KERAS_XCEPTION_WEIGHTS_URL",
        "KERAS_XCEPTION_OFFLINE=1",
    ):
        assert way_out in message
    assert "--weights" not in message  # Not every caller has that option.
