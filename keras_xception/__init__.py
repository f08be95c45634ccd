"""Xception (Chollet, 2017) for Keras 3.

A drop-in for `keras.applications.xception`:

    from keras_xception import Xception, preprocess_input, decode_predictions

Heavy modules (Keras and its backend) are imported on first use, so
`import keras_xception` and the weights tools stay fast.
"""

import importlib

__version__ = "0.1.0"

# Public name -> module that defines it.
_EXPORTS = {
    "Xception": "keras_xception.model",
    "preprocess_input": "keras_xception.preprocessing",
    "decode_predictions": "keras_xception.preprocessing",
    "load_image": "keras_xception.preprocessing",
    "optimize_for_inference": "keras_xception.inference",
    "count_flops": "keras_xception.flops",
    "feature_extractor": "keras_xception.features",
    "grad_cam": "keras_xception.explain",
    "overlay": "keras_xception.explain",
    "build_classifier": "keras_xception.transfer",
    "unfreeze": "keras_xception.transfer",
    "XceptionError": "keras_xception.errors",
    "WeightsError": "keras_xception.errors",
}

__all__ = sorted(_EXPORTS) + ["weights", "__version__"]


def __getattr__(name):
    if name == "weights":
        return importlib.import_module("keras_xception.weights")
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'keras_xception' has no attribute {name!r}")


def __dir__():
    return __all__
