"""Peak memory of `keras-xception classify`, `embed` and `explain`, measured in a subprocess.

Generates photos in a temporary folder, runs the command line on them in a
child process and reports that child's peak resident set size (Linux
`ru_maxrss` from `os.wait4`, so each run is measured on its own). Three
measurements:

- `large`: one W x W JPEG (default 12000 x 12000), decoded at a reduced
  scale by libjpeg's draft mode;
- `folder`: folders of 500, 1000 and 2000 small photos: the peak should not
  grow with the number of files;
- `batch`: one folder classified with several `--batch-size` values: the
  model's activations grow with the batch, which is why classify caps it;
- `embed`: `keras-xception embed FOLDER --output DIR --engine local` on the
  folders of `--counts` photos: results are written shard by shard, so the
  peak should not grow with the number of images either;
- `explain`: `keras-xception explain PHOTO --output DIR` on one generated
  W x H PNG per `--explain-sizes` entry (default 6000x6000). A PNG cannot be
  decoded at a reduced scale, and the overlay PNG is written at the photo's
  full size, so this is the pipeline's worst case: the photo is held at full
  size once, as uint8. A 13000x13000 photo (507 MiB of RGB) should stay under
  2.5 GB.

Photos are generated in a separate process: on Linux a child's `ru_maxrss`
includes the memory of the process it was started from (`subprocess` starts
children with `vfork`), so this script itself must stay small. It prints its
own peak so that can be checked.

The weights do not change memory, so by default a randomly initialised
classifier is saved to the temporary folder and used (no download); pass
`--weights` to use a real file.

    python scripts/measure_memory.py                      # everything
    python scripts/measure_memory.py large --side 12500
    python scripts/measure_memory.py folder --counts 100 200
    python scripts/measure_memory.py batch --batch-sizes 8 64
    python scripts/measure_memory.py embed --counts 500 2000
    python scripts/measure_memory.py explain --explain-sizes 6000x6000 13000x13000

Prints one line per run: what was classified, the exit status, the wall time
and the peak RSS in MiB.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import subprocess
import sys
import tempfile
import time


def write_random_weights(path: pathlib.Path) -> pathlib.Path:
    """Saves a randomly initialised Xception with its top (same size as ImageNet's)."""
    code = (
        "import sys, keras; "
        "keras.applications.Xception(weights=None).save_weights(sys.argv[1])"
    )
    subprocess.run([sys.executable, "-c", code, str(path)], check=True,
                   stderr=subprocess.DEVNULL)
    return path


def write_photo(path: pathlib.Path, width: int, height: int, seed: int) -> None:
    """A smooth colour gradient with some noise, saved as a JPEG (or a PNG if `path` says so)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    rows = []
    for top in range(0, height, 1024):  # Row bands keep the generator small.
        y = np.arange(top, min(top + 1024, height), dtype=np.float32)[:, None]
        x = np.arange(width, dtype=np.float32)[None, :]
        r = 255 * x / max(width - 1, 1) + 0 * y
        g = 255 * y / max(height - 1, 1) + 0 * x
        b = 128 + 64 * np.sin((x + y) / 50.0)
        band = np.stack([r, g, b], axis=-1) + rng.normal(0, 8, (len(y), width, 3))
        rows.append(np.clip(band, 0, 255).astype(np.uint8))
    picture = Image.fromarray(np.concatenate(rows))
    del rows
    if path.suffix.lower() == ".png":
        picture.save(path, compress_level=1)  # Fast: the file's size does not matter.
    else:
        picture.save(path, quality=90)


def write_photo_elsewhere(path: pathlib.Path, width: int, height: int, seed: int) -> None:
    """`write_photo` in a fresh process, so its memory is not this process's."""
    import concurrent.futures
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=context) as pool:
        pool.submit(write_photo, path, width, height, seed).result()


def make_folder(root: pathlib.Path, count: int, size=(640, 480)) -> pathlib.Path:
    """A folder of `count` photos (copies of a few distinct ones)."""
    import shutil

    folder = root / f"photos_{count}"
    folder.mkdir()
    originals = []
    for i in range(min(count, 8)):
        path = folder / f"{i:05d}.jpg"
        write_photo_elsewhere(path, *size, seed=i)
        originals.append(path)
    for i in range(len(originals), count):
        shutil.copyfile(originals[i % len(originals)], folder / f"{i:05d}.jpg")
    return folder


def peak_rss(args: list[str]) -> tuple[int, float, float, str]:
    """Runs `keras-xception ARGS`; returns (exit status, seconds, peak MiB, stderr tail)."""
    start = time.perf_counter()
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "keras_xception.cli", *args],
            stdout=subprocess.DEVNULL, stderr=err,
        )
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        seconds = time.perf_counter() - start
        err.seek(0)
        tail = err.read().decode(errors="replace").strip().splitlines()[-1:]
    return proc.returncode, seconds, usage.ru_maxrss / 1024, " ".join(tail)


def report(what: str, args: list[str]) -> None:
    code, seconds, mib, tail = peak_rss(args)
    line = f"{what:<34} exit {code}  {seconds:7.1f} s  peak RSS {mib:8.0f} MiB"
    if code:
        line += f"  ({tail})"
    print(line, flush=True)


def dimensions(text: str) -> tuple[int, int]:
    """`WxH` as `(width, height)`."""
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        width = height = 0
    if min(width, height) < 1:
        raise argparse.ArgumentTypeError(f"must be WIDTHxHEIGHT, e.g. 6000x6000. Received: {text!r}")
    return width, height


MEASUREMENTS = ("large", "folder", "batch", "embed", "explain")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", nargs="*", metavar="|".join(MEASUREMENTS),
                        help="measurements to run (default: all)")
    parser.add_argument("--side", type=int, default=12000,
                        help="side of the large photo (default: 12000)")
    parser.add_argument("--counts", type=int, nargs="+", default=[500, 1000, 2000],
                        help="folder sizes (default: 500 1000 2000)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[8, 32, 64],
                        help="batch sizes (default: 8 32 64)")
    parser.add_argument("--batch-images", type=int, default=128,
                        help="photos in the batch-size folder (default: 128)")
    parser.add_argument("--explain-sizes", type=dimensions, nargs="+", default=[(6000, 6000)],
                        metavar="WxH",
                        help="PNG photos for explain (default: 6000x6000)")
    parser.add_argument("--weights", default=None,
                        help="weights file with the top (default: random weights)")
    args = parser.parse_args(argv)
    what = args.what or list(MEASUREMENTS)
    unknown = set(what) - set(MEASUREMENTS)
    if unknown:
        parser.error(f"unknown measurement(s): {', '.join(sorted(unknown))}")

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    print(f"# {os.uname().machine}, {os.cpu_count()} CPUs, "
          f"TF_ENABLE_ONEDNN_OPTS={os.environ.get('TF_ENABLE_ONEDNN_OPTS', '(CLI default 1)')}",
          flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        root = pathlib.Path(tmp)
        weights = args.weights or str(write_random_weights(root / "random.weights.h5"))
        common = ["--weights", weights]
        if "large" in what:
            photo = root / f"large_{args.side}.jpg"
            write_photo_elsewhere(photo, args.side, args.side, seed=0)
            report(f"one {args.side}x{args.side} JPEG", ["classify", photo, *common])
        folders = {}
        if "folder" in what:
            for count in args.counts:
                folders[count] = folder = make_folder(root, count)
                report(f"{count} photos 640x480, batch 8",
                       ["classify", folder, "--jsonl", *common])
        if "embed" in what:
            for count in args.counts:
                folder = folders.get(count) or make_folder(root, count)
                folders[count] = folder
                report(f"embed {count} photos 640x480, local",
                       ["embed", folder, "--output", root / f"embed_{count}",
                        "--engine", "local", *common])
        if "batch" in what:
            folder = folders.get(args.batch_images) or make_folder(root, args.batch_images)
            for size in args.batch_sizes:
                report(f"{args.batch_images} photos, --batch-size {size}",
                       ["classify", folder, "--batch-size", str(size), *common])
        if "explain" in what:
            for width, height in args.explain_sizes:
                photo = root / f"explain_{width}x{height}.png"
                write_photo_elsewhere(photo, width, height, seed=0)
                report(f"explain one {width}x{height} PNG",
                       ["explain", photo, "--output", root / "explained", *common])
                photo.unlink()
    import resource

    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"# this script's own peak RSS: {own:.0f} MiB (a floor under each figure above)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
