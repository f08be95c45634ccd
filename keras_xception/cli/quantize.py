"""`keras-xception quantize`: an int8 model calibrated on your images, with its report.

Parses the arguments and calls `keras_xception.inference.quantize.quantize_source`:
the model SRC names (as every command takes one) is quantized to int8 by
NNCF on OpenVINO, calibrated on the images of `--calibration`, and written
to `--output` as an OpenVINO IR folder (`model.xml`, `model.bin`) with
`report.json` (agreement with float32 on held-out images, speeds, settings,
and the class names and input rule the commands need), atomically.
`classify`, `embed` and `classify --output` take that folder with `--model`.

stdout gets one line per result: the report's agreement and speed figures;
nothing is written when agreement is below the thresholds (unless
`--insist`), and the exit status is then 1.
"""

from __future__ import annotations

import sys

from keras_xception.cli._args import fraction, output_path
from keras_xception.errors import counted


def add_parser(subparsers):
    parser = subparsers.add_parser(
        "quantize",
        help="write an int8 OpenVINO model calibrated on your images, with an agreement report",
        description="Quantize a model to int8 (NNCF on OpenVINO) with calibration "
        "images, check it against float32 on held-out images, and write an "
        "OpenVINO IR folder with report.json. SRC is 'imagenet' (the model with "
        "its classifier), a weights file or URL, or a .keras model file. Needs "
        "the int8 extra.",
    )
    parser.add_argument("source", metavar="SRC")
    parser.add_argument("--calibration", required=True, metavar="DIR",
                        help="folder (or image file) of calibration images, decoded "
                        "as classify decodes them; a quarter is held out to check "
                        "agreement unless --held-out is given")
    parser.add_argument("--held-out", metavar="DIR", default=None,
                        help="images to check agreement on instead (not calibrated on)")
    parser.add_argument("--output", required=True, type=output_path, metavar="OUT",
                        help="the IR folder to write (must not exist, or be empty)")
    parser.add_argument("--features", action="store_true",
                        help="quantize the 2048-d pooled features (for embed) "
                        "instead of the model's classes")
    parser.add_argument("--min-top1", type=fraction, default=None, metavar="F",
                        help="lowest top-1 agreement with float32 accepted (default: 0.97)")
    parser.add_argument("--min-cosine", type=fraction, default=None, metavar="F",
                        help="lowest mean cosine to float32 accepted (default: 0.99)")
    parser.add_argument("--insist", action="store_true",
                        help="write the int8 model even below the thresholds")
    parser.set_defaults(run=run)


def run(args) -> int:
    from keras_xception.inference.int8_folder import quantize_source

    thresholds = {name: value for name, value in (
        ("top1_agreement", args.min_top1), ("mean_cosine", args.min_cosine))
        if value is not None}
    report = quantize_source(
        args.source, args.calibration, args.output, features=args.features,
        held_out=args.held_out, thresholds=thresholds, insist=args.insist,
        progress=sys.stderr,
    )
    agreed, speed, calib = report["agreement"], report["speed"], report["calibration"]
    line = (f"{args.output}: int8, calibrated on {counted(calib['images'], 'image')}; on "
            f"{counted(calib['held_out'], 'held-out image')} cosine to float32 mean "
            f"{agreed['mean_cosine']:.4f} min {agreed['min_cosine']:.4f}")
    if agreed["top1_agreement"] is not None:
        line += (f", top-1 agreement {agreed['top1_agreement']:.3f}, top-5 overlap "
                 f"{agreed['top5_overlap']:.3f}")
    line += (f"; {speed['int8_img_per_s']:.1f} img/s against float32's "
             f"{speed['float32_img_per_s']:.1f} ({speed['speedup']:.2f}x)")
    print(line)
    if not report["passed"]:
        print("warning: agreement is below the thresholds; written on --insist",
              file=sys.stderr)
    return 0
