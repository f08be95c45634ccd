"""What Grad-CAM costs: `grad_cam` on a batch against `predict` on the same batch.

    python scripts/benchmark_explain.py                  # 8 images, 299x299
    python scripts/benchmark_explain.py --rounds 10 --json

Both run on one flat `Xception()` model, in one process, alternated round by
round (predict, grad_cam, predict, ...) so that a machine busy with other
work slows both alike; each is run once first and not timed (`predict`
builds its `tf.function` then). The weights do not change the work done, so
random weights (the default) measure the same as ImageNet's; pass
`--weights imagenet` or a file to use those.

Prints each function's median seconds per batch and the median of the
per-round ratios grad_cam / predict, with the backend, oneDNN's state and
the CPU count (`--json`: one JSON object on stdout).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import sys
import time

# Run from a checkout without installing: the package beside this folder.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--size", type=int, default=299, help="image height and width")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--weights", default=None,
                        help="'imagenet', a weights file with the top, or none "
                        "(default: random weights)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if min(args.batch_size, args.rounds) < 1 or args.size < 71:
        parser.error("--batch-size and --rounds must be positive, --size at least 71")

    import keras
    import numpy as np

    from keras_xception import Xception, grad_cam
    from keras_xception.inference import runtime_info

    weights = None if args.weights in (None, "none") else args.weights
    model = Xception(weights=weights, input_shape=None if weights else (args.size, args.size, 3))
    size = model.inputs[0].shape[1]
    x = np.random.default_rng(0).uniform(-1, 1, (args.batch_size, size, size, 3))
    x = x.astype("float32")

    def predict():
        model.predict(x, batch_size=args.batch_size, verbose=0)

    def explain():
        grad_cam(model, x)

    predict()
    explain()
    times = {"predict": [], "grad_cam": []}
    for round_ in range(args.rounds):
        for name, fn in (("predict", predict), ("grad_cam", explain)):
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
        print(f"round {round_ + 1}/{args.rounds}: predict {times['predict'][-1]:.3f} s, "
              f"grad_cam {times['grad_cam'][-1]:.3f} s", file=sys.stderr, flush=True)

    ratios = [g / p for g, p in zip(times["grad_cam"], times["predict"])]
    info = runtime_info()
    result = {
        "backend": keras.backend.backend(),
        "onednn": info.get("onednn"),
        "cpus": os.cpu_count(),
        "batch_size": args.batch_size,
        "image_size": size,
        "rounds": args.rounds,
        "predict_s": statistics.median(times["predict"]),
        "grad_cam_s": statistics.median(times["grad_cam"]),
        "ratio": statistics.median(ratios),
        "ratios": ratios,
    }
    if args.json:
        print(json.dumps(result))
    else:
        print(f"backend {result['backend']}, oneDNN {result['onednn']}, "
              f"{result['cpus']} CPUs, batch {args.batch_size} at {size}x{size}, "
              f"{args.rounds} rounds")
        print(f"predict   {result['predict_s']:.3f} s per batch (median)")
        print(f"grad_cam  {result['grad_cam_s']:.3f} s per batch (median)")
        print(f"grad_cam / predict: {result['ratio']:.2f} (median of rounds; "
              f"range {min(ratios):.2f} to {max(ratios):.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
