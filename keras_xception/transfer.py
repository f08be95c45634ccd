"""Transfer learning: a new classifier on the Xception base, trained in two phases.

    from keras_xception import build_classifier, unfreeze
    from keras_xception.transfer import fit_classifier, save_classifier

    model = build_classifier(5, image_size=224, class_names=names)  # base frozen
    fit_classifier(model, train_ds, val_ds, epochs=5, fine_tune_epochs=5,
                   work_dir="run1")      # head, then block13-14 at a low rate
    save_classifier(model, "kitchen.keras")

The code lives in `keras_xception.training` (`classifier`, `loop`,
`checkpoints`, `saving`); this module keeps the names users import.
"""

from keras_xception.training.checkpoints import Checkpoints
from keras_xception.training.classifier import (
    BASE_NAME,
    BLOCK_NAMES,
    DEFAULT_DROPOUT,
    DEFAULT_UNFREEZE_FROM,
    FINE_TUNE_LEARNING_RATE,
    HEAD_LEARNING_RATE,
    base_of,
    block_index,
    build_classifier,
    unfreeze,
)
from keras_xception.training.loop import epoch_progress, fit_classifier
from keras_xception.training.saving import (
    METADATA_FILE,
    load_classifier,
    read_class_names,
    save_classifier,
)

__all__ = [
    "BASE_NAME",
    "BLOCK_NAMES",
    "Checkpoints",
    "DEFAULT_DROPOUT",
    "DEFAULT_UNFREEZE_FROM",
    "FINE_TUNE_LEARNING_RATE",
    "HEAD_LEARNING_RATE",
    "METADATA_FILE",
    "base_of",
    "block_index",
    "build_classifier",
    "epoch_progress",
    "fit_classifier",
    "load_classifier",
    "read_class_names",
    "save_classifier",
    "unfreeze",
]
