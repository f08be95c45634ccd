"""Image-classification datasets from a folder of class folders.

The code lives in `keras_xception.training.data`; see its docstring.
"""

from keras_xception.training.data import (  # noqa: F401
    CACHE_LIMIT_BYTES,
    ImageFolder,
    check_image,
    make_dataset,
    scan,
    shard,
    split,
)
