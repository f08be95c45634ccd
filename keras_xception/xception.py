"""Mirror of `keras.applications.xception`: change only the import.

    from keras_xception import xception
    model = xception.Xception()
    x = xception.preprocess_input(images)
    xception.decode_predictions(model.predict(x))
"""

from keras_xception.model import Xception
from keras_xception.preprocessing import decode_predictions, preprocess_input

__all__ = ["Xception", "decode_predictions", "preprocess_input"]
