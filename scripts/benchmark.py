"""Benchmark `optimize_for_inference` against `keras.applications.Xception`.

The same benchmark as `keras-xception benchmark` (the logic lives in
`keras_xception.benchmark`). Like the command line, it turns TensorFlow's
oneDNN kernels on unless `TF_ENABLE_ONEDNN_OPTS` is already set; the
`reference-default` row runs plain Keras in TensorFlow's default runtime.

    python scripts/benchmark.py --batch-size 8 --rounds 7 --json bench.json
    KERAS_BACKEND=jax python scripts/benchmark.py --mixed-precision bf16 \\
        --batch-size 256 --sgemm-size 8192
"""

import argparse
import os
import pathlib
import sys

os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

from keras_xception import benchmark  # noqa: E402

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    benchmark.add_arguments(parser)
    sys.exit(benchmark.main_from_args(parser.parse_args()))
