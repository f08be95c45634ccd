"""Exceptions for the failures a user is expected to meet and fix.

Every expected failure raises a subclass of `XceptionError`. The command line
prints these as a one-line message with exit status 1 and no traceback; any
other exception is a bug and keeps its traceback.

The concrete classes also derive from `ValueError`, as Keras's own argument
errors do, so `except ValueError` in existing code keeps working.
"""


def counted(count, noun, plural=None) -> str:
    """`count` and `noun` for a message: `"1 image"`, `"1,200 images"`,
    `"1 class"`, `"6 classes"` (`plural` defaults to `noun` + "s")."""
    return f"{count:,} {noun if count == 1 else plural or noun + 's'}"


class XceptionError(Exception):
    """Base class of every expected error raised by keras_xception."""


class ConfigError(XceptionError, ValueError):
    """An argument has a value the model or a command cannot use."""


class WeightsError(XceptionError, ValueError):
    """A weights file is missing, unreachable, corrupt or of the wrong kind."""


class ImageError(XceptionError, ValueError):
    """An image file is missing or cannot be decoded."""


class DataError(XceptionError, ValueError):
    """A training dataset folder is empty, has one class, or holds bad files."""
