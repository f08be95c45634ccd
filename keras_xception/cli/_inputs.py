"""What the commands that read images (classify, explain, embed) share.

- `Failures`: each input that cannot be processed is named on one line on
  stderr, and counted, so the command can end with exit status 1 while the
  other inputs are still processed;
- `capped_batch_size`: the batch size, lowered to the command's limit with a
  note on stderr;
- `printable_stdout`: stdout that prints a file name with bytes that are not
  valid UTF-8 as `\\xe9` instead of failing.
"""

from __future__ import annotations

import contextlib
import sys


class Failures:
    """An `on_error(path, message)` callback that names and counts failures.

    Attributes:
        count: How many inputs have failed so far.
    """

    def __init__(self):
        self.count = 0

    def __call__(self, path, message) -> None:
        self.count += 1
        print(f"error: {message}", file=sys.stderr, flush=True)


def capped_batch_size(requested: int, command: str) -> int:
    """`requested`, or `checks.MAX_BATCH_SIZE` with a note on stderr when it is larger.

    Args:
        requested: The `--batch-size` given.
        command: The command's name, for the note.
    """
    from keras_xception.checks import MAX_BATCH_SIZE as limit

    if requested <= limit:
        return requested
    print(f"note: --batch-size {requested} is more than {limit}, the most "
          f"{command} uses (memory grows with the batch); using {limit}",
          file=sys.stderr)
    return limit


def printable_stdout() -> None:
    """Makes stdout write undecodable file-name bytes as `\\xe9` escapes."""
    with contextlib.suppress(AttributeError):  # Not a text file: left as is.
        sys.stdout.reconfigure(errors="backslashreplace")
