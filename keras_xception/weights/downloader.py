"""Kept only for `keras_xception.model` and `keras_xception.training.settings`.

They import `is_url` from here; it lives in `keras_xception.weights.urls`.
Remove this module once they import it from there.
"""

from keras_xception.weights.urls import is_url

__all__ = ["is_url"]
