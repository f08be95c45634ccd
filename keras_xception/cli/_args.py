"""Argument types for the command line's parsers.

Each function takes the text given on the command line and returns the value,
or raises `argparse.ArgumentTypeError`; the parser then reports one line such
as `error: argument --top: must be a positive integer. Received: '0'` and the
command exits with status 1. Checking here, while the arguments are parsed,
means a bad value fails before any file is read or any model is built.

    parser.add_argument("--top", type=positive_int, default=5)
    parser.add_argument("path", type=existing_file)
"""

from __future__ import annotations

import argparse
import errno
import os
import pathlib


def _integer(text: str, what: str) -> int:
    try:
        return int(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(
            f"must be {what}. Received: {text!r}"
        ) from None


def positive_int(text: str) -> int:
    """An integer of at least 1 (a count, a batch size, a number of rounds)."""
    value = _integer(text, "a positive integer")
    if value < 1:
        raise argparse.ArgumentTypeError(
            f"must be a positive integer. Received: {text!r}"
        )
    return value


def non_negative_int(text: str) -> int:
    """An integer of at least 0 (a number of epochs, where 0 skips a phase)."""
    value = _integer(text, "an integer of 0 or more")
    if value < 0:
        raise argparse.ArgumentTypeError(
            f"must be an integer of 0 or more. Received: {text!r}"
        )
    return value


def fraction(text: str) -> float:
    """A number in [0, 1) (a validation split, a dropout rate)."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 <= value < 1:  # False for NaN too.
        raise argparse.ArgumentTypeError(
            f"must be a number from 0 up to (not including) 1. Received: {text!r}"
        )
    return value


def existing_file(text: str) -> pathlib.Path:
    """The path of an existing regular file (links are followed)."""
    path = pathlib.Path(text).expanduser()
    if path.is_file():
        return path
    raise argparse.ArgumentTypeError(_not_there(path, "file"))


def existing_dir(text: str) -> pathlib.Path:
    """The path of an existing folder (links are followed)."""
    path = pathlib.Path(text).expanduser()
    if path.is_dir():
        return path
    raise argparse.ArgumentTypeError(_not_there(path, "folder"))


def output_path(text: str) -> pathlib.Path:
    """A path that can be created: its nearest existing parent is a writable
    folder. Whether something already exists there is for the command to
    decide."""
    from keras_xception.errors import ConfigError
    from keras_xception.fileio import check_parent

    try:
        check_parent(text, what="the output")
    except ConfigError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return pathlib.Path(text).expanduser()


def _not_there(path: pathlib.Path, kind: str) -> str:
    """Why `path` is not the existing `kind` ("file" or "folder") asked for."""
    if os.path.lexists(path) and not path.exists():
        try:
            path.resolve(strict=True)
        except RuntimeError:  # A loop, before Python 3.13.
            return f"{str(path)!r} is a loop of symbolic links, not a {kind}."
        except OSError as err:
            if err.errno == errno.ELOOP:
                return f"{str(path)!r} is a loop of symbolic links, not a {kind}."
        return f"{str(path)!r} is a symbolic link to nothing, not a {kind}."
    if not path.exists():
        return f"no such {kind}: {str(path)!r}."
    if path.is_dir():
        return f"{str(path)!r} is a folder, not a file."
    return f"{str(path)!r} is not a folder."
