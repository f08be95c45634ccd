"""`keras-xception serve --engine ray`: the same app on Ray Serve, embedded.

One server for the module, as a user starts it: the command in a
subprocess, Ray embedded (no address), its temporary folder (`RAY_TMPDIR`)
one of the test's own, so that every process Ray starts can be found by its
command line. Its answers must equal the local engine's (a `Service` over
the same model in this process, as `keras_xception.serve.local` builds it)
within 1e-5, through TensorFlow Serving's `:predict` and the Open Inference
Protocol; every port those processes listen on must be on loopback; and
after SIGTERM the command exits 0 and leaves no Ray process behind.

In the xdist group "ray", with tests/test_batch_ray.py, so that two Ray
clusters never run at once.
"""

import base64
import concurrent.futures
import http.client
import ipaddress
import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np
import psutil
import pytest

from tests import servers

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("ray")]

CLASSES = ["cup", "fork", "glass", "knife", "plate", "spoon"]
ATOL = 1e-5
START_S = 300  # Ray, Serve, a replica loading TensorFlow: minutes on a loaded machine.


def ray_processes(marker):
    """Processes whose command line names `marker` (the test's Ray folder)."""
    found = []
    for process in psutil.process_iter(["pid", "cmdline"]):
        if any(marker in part for part in process.info["cmdline"] or ()):
            found.append(process)
    return found


@pytest.fixture(scope="module")
def kitchen_file(kitchen_model, tmp_path_factory):
    return servers.save_kitchen(kitchen_model, tmp_path_factory.mktemp("ray_serve"),
                                CLASSES)


@pytest.fixture(scope="module")
def local(kitchen_file):
    """What the local engine computes: a `Service` over the same model."""
    from keras_xception.serve.service import Service, open_model

    return Service(open_model(str(kitchen_file)), precision="float32")


@pytest.fixture(scope="module")
def ray_server(kitchen_file):
    """The command with --engine ray: `(url, process, ray_folder, stderr_lines)`."""
    # A short path of its own: Ray's socket paths must stay under 107 bytes.
    ray_folder = tempfile.mkdtemp(prefix="kxr", dir="/tmp")
    env = {k: v for k, v in os.environ.items()
           if k not in ("RAY_ADDRESS", "KERAS_XCEPTION_API_KEY")}
    env["RAY_TMPDIR"] = ray_folder
    process = subprocess.Popen(
        [sys.executable, "-m", "keras_xception.cli", "serve", "--engine", "ray",
         "--model", str(kitchen_file), "--port", "0", "--precision", "float32",
         "--max-batch-size", "4", "--batch-wait-ms", "20"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    lines = queue.Queue()
    seen = []

    def read(stream, into):
        for line in stream:
            into.put(line)
        into.put(None)

    threading.Thread(target=read, args=(process.stderr, lines), daemon=True).start()
    try:
        deadline = time.monotonic() + START_S
        match = None
        while match is None:
            line = lines.get(timeout=max(1, deadline - time.monotonic()))
            assert line is not None, "the server exited:\n" + "".join(seen)
            seen.append(line)
            match = re.fullmatch(r"serving xception on (http://127\.0\.0\.1:\d+)\n", line)
        yield match.group(1), process, ray_folder, lines, seen
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(60)
        for leftover in ray_processes(ray_folder):
            leftover.kill()
        shutil.rmtree(ray_folder, ignore_errors=True)


def call(url, method, path, body=None, headers=None):
    host, port = url[len("http://"):].rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=120)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, \
            response.read()
    finally:
        conn.close()


def test_ray_serve_answers_as_the_local_engine(ray_server, local, kitchen_photos):
    url, _, ray_folder, _, _ = ray_server
    files = [p.read_bytes() for p in kitchen_photos[:4]]
    want = local.predict(local.pixels([("f", f) for f in files]))

    # TensorFlow Serving, rows of base64 files.
    status, _, body = call(url, "POST", "/v1/models/xception:predict", json.dumps(
        {"instances": [{"b64": base64.b64encode(f).decode()} for f in files]}).encode(),
        {"Content-Type": "application/json"})
    assert status == 200, body
    np.testing.assert_allclose(json.loads(body)["predictions"], want, atol=ATOL)

    # Open Inference Protocol, binary pixels in and out.
    pixels = local.pixels([("f", f) for f in files[:2]])
    header = json.dumps({
        "inputs": [{"name": "pixels", "datatype": "FP32", "shape": list(pixels.shape),
                    "parameters": {"binary_data_size": pixels.nbytes}}],
        "parameters": {"binary_data_output": True}}).encode()
    status, headers, body = call(url, "POST", "/v2/models/xception/infer",
                                 header + pixels.astype("<f4").tobytes(),
                                 {"Inference-Header-Content-Length": str(len(header))})
    assert status == 200, body
    length = int(headers["inference-header-content-length"])
    assert json.loads(body[:length])["outputs"][0]["shape"] == [2, 6]
    np.testing.assert_allclose(np.frombuffer(body[length:], "<f4").reshape(2, 6),
                               local.predict(pixels), atol=ATOL)

    # Concurrent single images, batched by @serve.batch: each gets its own answer.
    def one(i):
        return i, call(url, "POST", "/v1/models/xception:predict", json.dumps(
            {"instances": [{"b64": base64.b64encode(files[i % 4]).decode()}]}).encode())

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        for i, (status, _, body) in pool.map(one, range(8)):
            assert status == 200, body
            np.testing.assert_allclose(json.loads(body)["predictions"][0], want[i % 4],
                                       atol=ATOL)

    # Health, errors and the page come from the same app.
    assert call(url, "GET", "/v2/health/ready")[0] == 200
    status, _, body = call(url, "POST", "/v1/models/xception:classify", b"not a photo")
    assert status == 400 and "not an image file" in json.loads(body)["error"]
    assert b'data-model="xception"' in call(url, "GET", "/")[2]

    # Every port Ray's processes and the command listen on is on loopback.
    listening = set()
    for process in ray_processes(ray_folder) + [psutil.Process(ray_server[1].pid)]:
        try:
            connections = process.net_connections(kind="inet")
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        listening |= {c.laddr.ip for c in connections if c.status == psutil.CONN_LISTEN}
    assert listening and all(loopback(ip) for ip in listening), listening


def loopback(text):
    """Whether an address is loopback, an IPv4-mapped IPv6 one included."""
    ip = ipaddress.ip_address(text)
    mapped = getattr(ip, "ipv4_mapped", None)
    return ip.is_loopback or (mapped is not None and mapped.is_loopback)


def test_sigterm_stops_serve_and_leaves_no_ray_process(ray_server):
    url, process, ray_folder, lines, seen = ray_server
    assert ray_processes(ray_folder)  # Ray's own processes, found by their folder.
    process.send_signal(signal.SIGTERM)
    process.wait(120)
    out = process.stdout.read()
    while (line := lines.get(timeout=60)) is not None:
        seen.append(line)
    err = "".join(seen)
    assert process.returncode == 0, err
    assert out == ""
    assert any(line.startswith("stopping: ") for line in seen), err
    # Ray's processes go as Ray shuts down; wait for the last to be reaped.
    deadline = time.monotonic() + 60
    while ray_processes(ray_folder) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert ray_processes(ray_folder) == []
