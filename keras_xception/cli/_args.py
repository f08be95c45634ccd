"""Argument types for the command line's parsers.

Each function takes the text given on the command line and returns the value,
or raises `argparse.ArgumentTypeError`; the parser then reports one line such
as `error: argument --top: must be a positive integer. Received: '0'` and the
command exits with status 1. Checking here, while the arguments are parsed,
means a bad value fails before any file is read or any model is built.

    parser.add_argument("--batch-size", type=positive_int, default=8)
"""

from __future__ import annotations

import argparse
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


def int_from_1_to(maximum: int):
    """An argparse type: an integer from 1 to `maximum`."""
    what = f"an integer from 1 to {maximum}"

    def parse(text: str) -> int:
        value = _integer(text, what)
        if not 1 <= value <= maximum:
            raise argparse.ArgumentTypeError(f"must be {what}. Received: {text!r}")
        return value

    return parse


def fraction(text: str) -> float:
    """An argparse type: a number from 0 to 1."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be a number from 0 to 1. Received: {text!r}")
    return value


def output_path(text: str) -> pathlib.Path:
    """A folder that can be created: its nearest existing parent is a
    writable folder and it is not a link to nothing. Whether something
    already exists there is for the command to decide."""
    from keras_xception.errors import ConfigError
    from keras_xception.fileio import check_output_folder

    try:
        check_output_folder(text, what="the output")
    except ConfigError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return pathlib.Path(text).expanduser()
