"""How close each runtime and precision stays to float32, on your own photos.

    python scripts/precision_accuracy.py --weights xception_notop.weights.h5 photos/

Builds `Xception(include_top=False, pooling="avg")` with the given no-top
weights, computes the 2048 features of every photo in float32 with Keras,
then with `optimize_for_inference` in each installed runtime and precision,
and prints the minimum and mean cosine of each to float32 (the accuracy
guard of `precision="auto"` asks for a minimum of 0.998). No timing: see
`scripts/benchmark.py` for speed.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys

import numpy as np

# Run from a checkout without installing: the package beside this folder.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))


def cosines(a, b):
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("photos", nargs="+", help="image files or folders")
    parser.add_argument("--weights", required=True, help="Xception no-top weights file")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    from keras_xception import Xception, optimize_for_inference, preprocess_input
    from keras_xception.images import find_given
    from keras_xception.preprocessing import load_image
    from keras_xception.inference import onnxruntime as ort_runtime
    from keras_xception.inference import openvino as ov_runtime

    paths = [p for source in args.photos
             for p in find_given(source, on_error=lambda p, m: print(m, file=sys.stderr))]
    if not paths:
        print("error: no photos found", file=sys.stderr)
        return 1
    batch = np.stack([preprocess_input(load_image(p)) for p in paths])
    model = Xception(weights=args.weights, include_top=False, pooling="avg",
                     input_shape=(299, 299, 3))
    expected = model.predict(batch, batch_size=8, verbose=0)
    runs = [("keras", "float32"), ("keras", "bfloat16")]
    if ov_runtime.installed():
        runs += [("openvino", "float32"), ("openvino", "bfloat16")]
    if ort_runtime.installed():
        runs += [("onnxruntime", "float32")]
    rows = []
    for runtime, precision in runs:
        got = optimize_for_inference(model, precision, runtime=runtime).predict(
            batch, batch_size=8)
        c = cosines(got, expected)
        rows.append({"runtime": runtime, "precision": precision, "photos": len(paths),
                     "min_cosine": float(c.min()), "mean_cosine": float(c.mean())})
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print(f"{'runtime':<12} {'precision':<9} {'photos':>6} {'min cos':>9} {'mean cos':>9}")
        for r in rows:
            print(f"{r['runtime']:<12} {r['precision']:<9} {r['photos']:>6} "
                  f"{r['min_cosine']:>9.6f} {r['mean_cosine']:>9.6f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
