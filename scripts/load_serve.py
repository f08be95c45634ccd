"""Load on `keras-xception serve`: closed-loop clients, against offline and a naive server.

    python scripts/load_serve.py --weights xception_top.weights.h5            # the full run
    python scripts/load_serve.py --model kitchen.keras --quick --json r.json  # a smoke run

In one run, on generated 480x360 JPEGs (smooth random colour fields):

1. offline: `classify`'s pipeline in this process (`serve.service.Service`,
   the one decode pipeline and the fast predictor) on batches of 8, in
   images/s, and the fast predictor's batch-1 latency (median);
2. `keras-xception serve` in a subprocess (`--port 0`, the model and
   `--precision` given here, the default batching and queue), then for each
   concurrency C in `--levels` (1, 4, 16, 64), C clients in a closed loop for
   `--seconds` (25) each, every request one JPEG through
   `POST /v1/models/NAME:predict` as `{"instances": [{"b64": ...}]}` on a
   kept-alive connection: requests/s, latency p50/p95/p99 (ms) and errors by
   HTTP status (a 503 is counted, and its own latency kept);
3. optionally (`--soak N`, 5000 for the full run) N requests at C=32, and
   the server's resident memory after warm-up (the first 10%) and at the end;
4. a naive server in a subprocess, what users write today: a FastAPI route
   calling `keras.applications.Xception(...).predict` on each request's image
   (or `keras.saving.load_model` for `--model`), under the same load at
   `--naive-levels` (16).

It prints a table and the ratios the issue names: serve at C=16 against
offline images/s and against the naive server at C=16, and serve's C=1 p50
minus the fast predictor's batch-1 latency. `--json FILE` writes it all.
The clients run in this process, on the same machine as the servers: on a
small machine they take some of its CPU. `--quick`: levels 1 and 4, 3 s
each, a 60-request soak, naive at C=4: a smoke run, not a measurement.
"""

from __future__ import annotations

import argparse
import base64
import datetime
import http.client
import io
import json
import os
import pathlib
import platform
import re
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # Run from a checkout without installing.

NAIVE_SERVER = r'''
import base64, io, sys
import keras, numpy as np, uvicorn
from fastapi import FastAPI, Request
from PIL import Image

kind, given, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
if kind == "model":
    model = keras.saving.load_model(given)
else:
    model = keras.applications.Xception(weights=given)
size = tuple(model.inputs[0].shape[1:3])
app = FastAPI()

@app.post("/v1/models/xception:predict")
def predict(body: dict):
    image = Image.open(io.BytesIO(base64.b64decode(body["instances"][0]["b64"])))
    x = np.asarray(image.convert("RGB").resize(size[::-1]), "float32")[None]
    x = keras.applications.xception.preprocess_input(x)
    return {"predictions": model.predict(x, verbose=0).tolist()}

print("ready", flush=True)
uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")
'''


def make_jpegs(count: int, seed: int = 0) -> list[bytes]:
    """`count` 480x360 JPEGs (quality 90) of smooth random colour fields."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        small = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
        image = Image.fromarray(small).resize((480, 360), Image.Resampling.BICUBIC)
        noise = rng.integers(-12, 13, (360, 480, 3))
        pixels = np.clip(np.asarray(image, np.int16) + noise, 0, 255).astype(np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
        out.append(buffer.getvalue())
    return out


def offline(given, precision, jpegs, seconds):
    """classify's pipeline in this process: images/s at batch 8, batch-1 latency."""
    from keras_xception.serve.service import Service, open_model

    service = Service(open_model(given), precision=precision)
    service.warm_up(8)
    items = [("image", jpeg) for jpeg in jpegs[:8]]
    images, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds or images < 16:
        service.predict(service.pixels(items))
        images += len(items)
    per_s = images / (time.perf_counter() - start)
    one = service.pixels(items[:1])
    times = []
    for _ in range(max(5, int(seconds * 2))):
        began = time.perf_counter()
        service.predict(one)
        times.append(time.perf_counter() - began)
    return {"images_per_s": round(per_s, 2), "batch_size": 8,
            "batch1_latency_ms": round(1000 * float(np.median(times)), 2),
            "describe": {k: str(v) for k, v in service.describe().items()}}


def percentile_ms(values, q):
    return round(1000 * float(np.percentile(values, q)), 2) if values else None


def closed_loop(port, path, bodies, clients, *, seconds=None, total=None, on_done=None):
    """`clients` threads, each sending one request after the other until the time
    (or the `total` count) is up; returns the level's figures."""
    lock = threading.Lock()
    latencies, refused, errors = [], [], {}
    sent = [0]
    stop_at = None if seconds is None else time.perf_counter() + seconds

    def more():
        with lock:
            if total is not None:
                if sent[0] >= total:
                    return False
                sent[0] += 1
                return True
        return time.perf_counter() < stop_at

    def client(k):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        i = k
        while more():
            body = bodies[i % len(bodies)]
            i += clients
            began = time.perf_counter()
            try:
                conn.request("POST", path, body, {"Content-Type": "application/json"})
                response = conn.getresponse()
                response.read()
                status = response.status
            except (OSError, http.client.HTTPException) as err:
                status = type(err).__name__
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
            took = time.perf_counter() - began
            with lock:
                if status == 200:
                    latencies.append(took)
                    count = len(latencies)
                else:
                    errors[str(status)] = errors.get(str(status), 0) + 1
                    if status == 503:
                        refused.append(took)
                    count = None
            if on_done is not None and count is not None:
                on_done(count)
        conn.close()

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    began = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - began
    return {"concurrency": clients, "seconds": round(wall, 2), "requests": len(latencies),
            "requests_per_s": round(len(latencies) / wall, 2),
            "p50_ms": percentile_ms(latencies, 50), "p95_ms": percentile_ms(latencies, 95),
            "p99_ms": percentile_ms(latencies, 99), "errors": errors,
            "refused_p50_ms": percentile_ms(refused, 50)}


def start_serve(args):
    source = ["--model", args.model] if args.model else ["--weights", args.weights]
    process = subprocess.Popen(
        [sys.executable, "-m", "keras_xception.cli", "serve", *source, "--port", "0",
         "--precision", args.precision],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    lines = []
    for line in process.stderr:
        lines.append(line)
        match = re.fullmatch(r"serving (\S+) on http://127\.0\.0\.1:(\d+)\n", line)
        if match:
            # Keep reading stderr (the access log), so the pipe never fills.
            threading.Thread(target=lambda: [None for _ in process.stderr],
                             daemon=True).start()
            return process, match.group(1), int(match.group(2))
    raise SystemExit("keras-xception serve did not start:\n" + "".join(lines))


def start_naive(args, folder):
    import socket

    script = folder / "naive_server.py"
    script.write_text(NAIVE_SERVER)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    kind, given = ("model", args.model) if args.model else ("weights", args.weights)
    process = subprocess.Popen([sys.executable, str(script), kind, given, str(port)],
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    if process.stdout.readline().strip() != "ready":
        raise SystemExit("the naive server did not start")
    for _ in range(600):  # uvicorn binds just after the line above.
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return process, port
        except OSError:
            time.sleep(0.1)
    raise SystemExit("the naive server did not listen")


def stop(process):
    process.terminate()
    try:
        process.wait(60)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def rss_mb(pid):
    import psutil

    return round(psutil.Process(pid).memory_info().rss / 2**20, 1)


def ratio(a, b):
    return round(a / b, 2) if a and b else None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--weights", default="imagenet",
                        help="as serve's --weights (default: imagenet)")
    source.add_argument("--model", help="a .keras model instead, as serve's --model")
    parser.add_argument("--precision", default="auto", choices=("auto", "float32", "bfloat16"))
    parser.add_argument("--levels", default="1,4,16,64",
                        help="concurrencies, comma-separated (default: 1,4,16,64)")
    parser.add_argument("--seconds", type=float, default=None,
                        help="per level (default: 25; 3 with --quick)")
    parser.add_argument("--naive-levels", default="16",
                        help="concurrencies for the naive server (default: 16; '' skips it)")
    parser.add_argument("--soak", type=int, default=0, metavar="N",
                        help="N requests at C=32 after the levels, with the server's "
                        "resident memory (default: 0, none; the full run: 5000)")
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run: levels 1,4 for 3 s, a 60-request soak at "
                        "C=4, naive at C=4")
    parser.add_argument("--json", metavar="FILE", help="also write the report here")
    args = parser.parse_args(argv)
    soak_clients = 32
    if args.quick:
        args.levels, args.naive_levels = "1,4", "4"
        args.soak, soak_clients = 60, 4
    if args.seconds is None:
        args.seconds = 3.0 if args.quick else 25.0
    levels = [int(c) for c in args.levels.split(",") if c]
    naive_levels = [int(c) for c in args.naive_levels.split(",") if c]

    jpegs = make_jpegs(32)
    bodies = [json.dumps({"instances": [{"b64": base64.b64encode(j).decode()}]}).encode()
              for j in jpegs]
    given = args.model or args.weights
    report = {
        "date": datetime.date.today().isoformat(),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, "
                   f"load average {os.getloadavg()[0]:.1f} at the start",
        "command": "python scripts/load_serve.py " + " ".join(argv if argv is not None
                                                              else sys.argv[1:]),
        "model": given, "precision": args.precision,
    }
    print("offline (classify's pipeline, batch 8)...", file=sys.stderr, flush=True)
    report["offline"] = offline(given, args.precision, jpegs, min(args.seconds, 10.0))

    process, name, port = start_serve(args)
    path = f"/v1/models/{name}:predict"
    try:
        closed_loop(port, path, bodies, 4, total=16)  # Warm connections and caches.
        report["serve"] = []
        for clients in levels:
            print(f"serve, C={clients}...", file=sys.stderr, flush=True)
            report["serve"].append(closed_loop(port, path, bodies, clients,
                                               seconds=args.seconds))
        if args.soak:
            print(f"soak, {args.soak} requests at C={soak_clients}...", file=sys.stderr,
                  flush=True)
            memory = {}
            warm = max(1, args.soak // 10)

            def on_done(count):
                if count == warm:
                    memory["after_warm_up_mb"] = rss_mb(process.pid)

            result = closed_loop(port, path, bodies, soak_clients, total=args.soak,
                                 on_done=on_done)
            memory["at_end_mb"] = rss_mb(process.pid)
            result.update(memory)
            if "after_warm_up_mb" in memory:
                result["rss_growth_mb"] = round(memory["at_end_mb"]
                                                - memory["after_warm_up_mb"], 1)
            report["soak"] = result
    finally:
        stop(process)

    report["naive"] = []
    if naive_levels:
        with tempfile.TemporaryDirectory() as folder:
            naive, naive_port = start_naive(args, pathlib.Path(folder))
            try:
                closed_loop(naive_port, "/v1/models/xception:predict", bodies, 1, total=2)
                for clients in naive_levels:
                    print(f"naive, C={clients}...", file=sys.stderr, flush=True)
                    report["naive"].append(closed_loop(
                        naive_port, "/v1/models/xception:predict", bodies, clients,
                        seconds=args.seconds))
            finally:
                stop(naive)

    by_c = {r["concurrency"]: r for r in report["serve"]}
    naive_by_c = {r["concurrency"]: r for r in report["naive"]}
    compare = 16 if 16 in by_c else max(by_c)
    report["ratios"] = {
        "concurrency": compare,
        "serve_over_offline": ratio(by_c[compare]["requests_per_s"],
                                    report["offline"]["images_per_s"]),
        "serve_over_naive": ratio(by_c[compare]["requests_per_s"],
                                  naive_by_c.get(compare, {}).get("requests_per_s")),
        "c1_p50_minus_batch1_ms": (round(by_c[1]["p50_ms"]
                                         - report["offline"]["batch1_latency_ms"], 2)
                                   if 1 in by_c and by_c[1]["p50_ms"] is not None else None),
    }
    print_table(report)
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0


def print_table(report):
    print(f"{report['date']}, {report['machine']}; model {report['model']}, "
          f"precision {report['precision']}")
    off = report["offline"]
    print(f"offline, batch 8: {off['images_per_s']} images/s; batch-1 latency "
          f"{off['batch1_latency_ms']} ms")
    print("| server | C | requests/s | p50 ms | p95 ms | p99 ms | errors |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | --- |")
    rows = [("serve", r) for r in report["serve"]]
    if report.get("soak"):
        rows.append(("serve, soak", report["soak"]))
    rows += [("naive", r) for r in report["naive"]]
    for label, r in rows:
        errors = ", ".join(f"{k}: {v}" for k, v in r["errors"].items()) or "0"
        print(f"| {label} | {r['concurrency']} | {r['requests_per_s']} | {r['p50_ms']} | "
              f"{r['p95_ms']} | {r['p99_ms']} | {errors} |")
    if report.get("soak"):
        s = report["soak"]
        print(f"soak: {s['requests']} requests; server RSS {s.get('after_warm_up_mb')} MB "
              f"after warm-up, {s.get('at_end_mb')} MB at the end "
              f"(growth {s.get('rss_growth_mb')} MB)")
    r = report["ratios"]
    print(f"ratios at C={r['concurrency']}: serve/offline {r['serve_over_offline']}, "
          f"serve/naive {r['serve_over_naive']}; C=1 p50 minus batch-1 latency "
          f"{r['c1_p50_minus_batch1_ms']} ms")


if __name__ == "__main__":
    sys.exit(main())
