"""`keras-xception export`: write a model for serving without this package.

Parses the arguments and calls `keras_xception.export.export_source`; see
that module for the formats and what the exported model takes.
"""

from __future__ import annotations

import sys

from keras_xception.export import FORMATS


def add_parser(subparsers):
    parser = subparsers.add_parser(
        "export",
        help="export a model as a SavedModel, ONNX, LiteRT or OpenVINO file",
        description="Export Xception for serving. WEIGHTS_OR_MODEL is "
        "'imagenet' (the model with its classifier), a weights file or URL, "
        "or a .keras model file.",
    )
    parser.add_argument("source", metavar="WEIGHTS_OR_MODEL")
    parser.add_argument("out", metavar="OUT",
                        help="output directory (saved_model, openvino) or file")
    parser.add_argument("--format", choices=sorted(FORMATS), default="saved_model",
                        help="default: saved_model")
    parser.add_argument("--no-optimize", action="store_true",
                        help="keep the BatchNormalization layers instead of "
                        "folding them into the convolutions")
    parser.set_defaults(run=run)


def run(args) -> int:
    from keras_xception.export import export_source

    out = export_source(args.source, args.out, args.format,
                        optimize=not args.no_optimize, progress=sys.stderr)
    print(f"wrote {out} ({args.format})", file=sys.stderr)
    return 0
