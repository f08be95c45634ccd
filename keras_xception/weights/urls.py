"""Which strings are URLs, whether a URL can be downloaded, and the mirror.

- `looks_like_url`: a string that starts with `scheme://` (so it is meant as
  a URL, not a path);
- `is_url`: an http(s) URL string;
- `check_url`: refuses a `scheme://` string that cannot be downloaded;
- `mirror_base`, `mirror_url`: the mirror in `KERAS_XCEPTION_WEIGHTS_URL`
  that official file names are appended to.
"""

from __future__ import annotations

import os
import re
import urllib.parse

from keras_xception.errors import WeightsError

MIRROR_ENV = "KERAS_XCEPTION_WEIGHTS_URL"

_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")


def is_url(value) -> bool:
    """Whether `value` is an http(s) URL string (rather than a local path)."""
    return isinstance(value, str) and value[:8].lower().startswith(
        ("http://", "https://")
    )


def check_url(url: str) -> None:
    """Refuses a `scheme://` string that is not a usable http(s) URL.

    Args:
        url: A string that starts with `scheme://`.

    Raises:
        WeightsError: If the scheme is not http or https, the URL cannot be
            parsed (a bad IPv6 address, a port that is not a number), or it
            names no host.
    """
    if not is_url(url):
        scheme = url.split("://", 1)[0]
        raise WeightsError(
            f"Only http:// and https:// URLs can be downloaded, not {scheme}://. "
            f"Download the file by other means and pass its path. Received: {url!r}"
        )
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # Raises for a port that is not a number in 0-65535.
    except ValueError as err:
        raise WeightsError(f"{url!r} is not a valid URL: {err}.") from err
    if not parts.hostname:
        raise WeightsError(
            f"{url!r} is not a valid URL: it names no host. Use "
            f"http://HOST/PATH or https://HOST/PATH."
        )


def looks_like_url(value) -> bool:
    """Whether `value` is a string that starts with `scheme://`."""
    return isinstance(value, str) and _SCHEME.match(value) is not None


def mirror_base() -> str | None:
    """The base URL in `KERAS_XCEPTION_WEIGHTS_URL`, or `None` when unset.

    Raises:
        WeightsError: If the variable is set to something other than an
            http(s) URL.
    """
    base = os.environ.get(MIRROR_ENV, "").strip()
    if not base:
        return None
    try:
        parts = urllib.parse.urlsplit(base)
        parts.port  # Raises for a port that is not a number.
    except ValueError:
        parts = None
    if (
        parts is None
        or parts.scheme.lower() not in ("http", "https")
        or not parts.hostname
    ):
        raise WeightsError(
            f"{MIRROR_ENV} must be an http:// or https:// base URL with a host, "
            "that the weight file names are appended to. "
            f"Received: {MIRROR_ENV}={base!r}"
        )
    return base.rstrip("/") + "/"


def mirror_url(fname: str) -> str | None:
    """The mirror URL of `fname` when `KERAS_XCEPTION_WEIGHTS_URL` is set."""
    base = mirror_base()
    return None if base is None else base + fname
