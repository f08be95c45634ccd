"""Images per second of `keras-xception embed` on each engine, on generated photos.

    python scripts/benchmark_batch.py --weights xception_notop.weights.h5 --images 2000

Runs the same job (embed, float32, batch size 8) with `--engine local`,
`--engine ray` embedded on this machine, and `--engine ray` against a
two-node `ray.cluster_utils.Cluster` started on this machine (127.0.0.1
only, one CPU per node unless --cpus-per-node), each into a fresh output
folder, and prints a table: wall time of the whole run (model building and
Ray start-up included), images/s and the ratio to local. `--json FILE`
writes the figures too.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import tempfile
import time

import numpy as np

# Run from a checkout without installing: the package beside this folder.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))


def make_photos(folder: pathlib.Path, count: int, seed: int = 0) -> None:
    """Writes `count` 480x360 JPEGs of smooth random colour fields."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for i in range(count):
        small = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
        image = Image.fromarray(small).resize((480, 360), Image.Resampling.BICUBIC)
        noise = rng.integers(-12, 13, (360, 480, 3))
        pixels = np.clip(np.asarray(image, np.int16) + noise, 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"photo_{i:06d}.jpg", quality=90)


def timed(label, folder, output, weights, batch_size, **kwargs):
    from keras_xception import batch

    start = time.perf_counter()
    manifest = batch.run("embed", [folder], output, weights=weights,
                         batch_size=batch_size, progress=sys.stderr, **kwargs)
    seconds = time.perf_counter() - start
    images = manifest["counts"]["images"]
    return {"engine": label, "images": images, "seconds": round(seconds, 1),
            "images_per_s": round(images / seconds, 2)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", required=True, help="Xception no-top weights file")
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--cpus-per-node", type=int, default=1)
    parser.add_argument("--engines", default="local,ray,ray-two-node")
    parser.add_argument("--json", metavar="FILE")
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    engines = args.engines.split(",")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        photos = tmp / "photos"
        photos.mkdir()
        make_photos(photos, args.images)
        common = dict(weights=args.weights, batch_size=args.batch_size,
                      shard_size=max(1, args.images // 8))
        if "local" in engines:
            rows.append(timed("local", photos, tmp / "local", engine="local", **common))
        if "ray" in engines:
            rows.append(timed("ray (embedded)", photos, tmp / "ray", engine="ray",
                              **common))
        if "ray-two-node" in engines:
            from ray.cluster_utils import Cluster

            node = {"num_cpus": args.cpus_per_node, "object_store_memory": 300 << 20,
                    "node_ip_address": "127.0.0.1"}
            cluster = Cluster(initialize_head=True,
                              head_node_args={**node, "include_dashboard": False})
            try:
                cluster.add_node(**node)
                cluster.wait_for_nodes()
                rows.append(timed("ray (two nodes)", photos, tmp / "ray2", engine="ray",
                                  address=cluster.address, **common))
            finally:
                cluster.shutdown()
    base = next((r["images_per_s"] for r in rows if r["engine"] == "local"), None)
    print(f"{'engine':<18} {'images':>7} {'seconds':>8} {'images/s':>9} {'vs local':>9}")
    for row in rows:
        ratio = f"{row['images_per_s'] / base:.2f}x" if base else "-"
        row["ratio_to_local"] = ratio
        print(f"{row['engine']:<18} {row['images']:>7} {row['seconds']:>8} "
              f"{row['images_per_s']:>9} {ratio:>9}")
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
