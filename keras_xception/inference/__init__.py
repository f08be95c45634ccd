"""Fast CPU inference: fold BatchNorm, pick a runtime and a precision.

`optimize_for_inference(model, precision="auto")` is the entry point (see
`predictor`). The package is split by role:

- `fold`: BatchNormalization folding on a float32 copy, shared by every
  runtime;
- `tensorflow`: the Keras backend's compiled function (TensorFlow float32,
  or bf16 through oneDNN), `compile_forward`, `onednn_enabled`,
  `runtime_info`;
- `openvino`, `onnxruntime`: optional runtimes (extras), each imported only
  inside its module;
- `cpu`: native bf16 from the CPU's flags; `guard`: the accuracy guard;
- `inputs`: what the fast `predict` checks in its input batch (shape,
  emptiness) and guarantees for it (NaN out for an image with NaN or
  infinity in, whatever the runtime).

Every runtime module offers the same small interface: `NAME`, `label()`,
`native_bf16(flags)`, `threads()` and `compile(model, precision)`.
"""

from keras_xception.inference.fold import fold_batch_norm, with_dtype_policy
from keras_xception.inference.guard import AccuracyWarning
from keras_xception.inference.predictor import (
    PRECISIONS,
    RUNTIMES,
    attach_fast_predict,
    optimize_for_inference,
)
from keras_xception.inference.tensorflow import (
    compile_forward,
    onednn_enabled,
    runtime_info,
)

__all__ = [
    "PRECISIONS",
    "RUNTIMES",
    "AccuracyWarning",
    "attach_fast_predict",
    "compile_forward",
    "fold_batch_norm",
    "onednn_enabled",
    "optimize_for_inference",
    "runtime_info",
    "with_dtype_policy",
]
