"""Pretrained Xception weights: find, download, verify and read them.

    from keras_xception import weights

    path = weights.fetch(include_top=False)   # cached, or downloaded and verified
    weights.verify(path, include_top=False)   # raises WeightsError if wrong

The files are declared once in `registry.WEIGHTS`. Nothing here imports Keras
or TensorFlow (`progress=True` imports Keras's bar only while downloading), so
checking a file costs what h5py costs.

Environment variables:

- `KERAS_HOME`: the cache is `$KERAS_HOME/models`, as for `keras.applications`.
- `KERAS_XCEPTION_WEIGHTS_URL`: a mirror; official file names are appended
  to it.
- `KERAS_XCEPTION_OFFLINE=1`: never use the network; a missing file is an
  error that says where to put it.
- `HTTPS_PROXY`, `HTTP_PROXY`, `NO_PROXY`: proxies, read by `urllib`.
"""

from __future__ import annotations

import os
import pathlib

from keras_xception.errors import WeightsError
from keras_xception.weights import integrity
from keras_xception.weights.cache_entry import CachedFileWarning, download, fetch
from keras_xception.weights.urls import check_url, is_url, looks_like_url
from keras_xception.weights.validate import read_weights, verify

__all__ = [
    "CachedFileWarning",
    "WeightsError",
    "download",
    "fetch",
    "read_weights",
    "resolve",
    "verify",
]


def resolve(weights, *, include_top, progress=True) -> pathlib.Path:
    """The local file for the builder's `weights` argument.

    Args:
        weights: `"imagenet"` (the official file for the variant, fetched
            into the cache), an `http://` or `https://` URL (downloaded into
            the cache), or the path of a local file.
        include_top: Whether the model has the classifier; picks the
            `"imagenet"` file.
        progress: Where a download reports progress: `True` (Keras's bar on
            stdout), `False` (nowhere) or a text stream such as `sys.stderr`.

    Returns:
        The path of an existing file; read it with `read_weights`.

    Raises:
        WeightsError: If the file cannot be fetched, a URL is not a valid
            http(s) URL, or a local path does not exist or is not a regular
            file (a folder, a FIFO, a device).
    """
    if isinstance(weights, str) and weights == "imagenet":
        return fetch(include_top, progress=progress)
    if looks_like_url(weights):
        check_url(weights)
    if is_url(weights):
        return download(weights, progress=progress)
    if not isinstance(weights, (str, os.PathLike)):
        raise WeightsError(
            "`weights` must be 'imagenet', an http(s) URL or the path of a "
            f"weights file. Received: weights={weights!r}"
        )
    path = pathlib.Path(weights).expanduser()
    if not path.exists():
        raise WeightsError(
            f"Weights file not found: {path}. Check the path, pass a URL, or "
            "pass weights='imagenet' for the official file."
        )
    integrity.check_regular(path)  # A FIFO or a device is never opened.
    return path
