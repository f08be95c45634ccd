"""What the commands that read images (classify, explain, embed) share.

- `Failures`: each input that cannot be processed is named on one line on
  stderr, and counted, so the command can end with exit status 1 while the
  other inputs are still processed;
- `capped_batch_size`: the batch size, lowered to the command's limit with a
  note on stderr;
- `start`: the checks, the search for images and the model source, in
  that order, before TensorFlow is imported;
- `Results`: the table, `--json` or `--jsonl` on stdout;
- `display_path`: a path as a table shows it;
- `printable_stdout`: stdout that prints a file name with bytes that are not
  valid UTF-8 as `\\xe9` instead of failing.
"""

from __future__ import annotations

import contextlib
import os
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


def display_path(path) -> str:
    """A path as text for a table: bytes that are not UTF-8 shown as `\\xNN`."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


class Start:
    """What `start` checked and found for a command that reads images.

    Attributes:
        found: What `find` returned for the paths (files or jobs).
        on_error: The `Failures` counter every later failure goes through.
        max_pixels: The pixel limit in force.
        batch_size: The batch size, capped.
        source: The checked `keras_xception.source.Source`.
        top: `--top`, checked against the model's classes.
    """


def start(args, command, find):
    """Checks a command's arguments, finds its images and opens its model.

    All of it before TensorFlow is imported: a bad argument, a missing
    file, an empty cache offline or a `--top` the model cannot give fails
    in a moment, with only its message.

    Args:
        args: The parsed arguments (`paths`, `top`, `max_pixels`,
            `batch_size`, `model`, `weights`).
        command: The command's name, for messages.
        find: `find(paths, on_error)`: the images (`pipelines.find_files`
            or `pipelines.find_jobs`).

    Returns:
        A `Start`, or `None` when no image was found (each problem is on
        stderr already; the command exits with status 1).
    """
    from keras_xception.checks import MAX_TOP, positive_int
    from keras_xception.images import max_pixels_limit
    from keras_xception.source import open_source

    if args.top is not None:
        positive_int(args.top, "--top", maximum=MAX_TOP)
    ready = Start()
    ready.max_pixels = max_pixels_limit(args.max_pixels)
    ready.batch_size = capped_batch_size(args.batch_size, command)
    printable_stdout()
    ready.on_error = Failures()
    ready.found = find(args.paths, ready.on_error)
    if not ready.found:
        if not ready.on_error.count:
            print(f"error: no image files to {command}", file=sys.stderr)
        return None
    given = args.model if args.model is not None else args.weights
    ready.source = open_source(given, need_top=True,
                               progress=sys.stderr)
    ready.top = ready.source.check_top(args.top)
    return ready


class Results:
    """Prints results as the table, `--json` (one list at the end) or `--jsonl` asks.

    Args:
        args: The parsed arguments (`json`, `jsonl`).
        table: `table(record)`: the record's lines in the table.
    """

    def __init__(self, args, table):
        self.json, self.jsonl, self.table = args.json, args.jsonl, table
        self.records = []

    def add(self, record) -> None:
        """Prints `record` now (table, `--jsonl`) or keeps it for `close`."""
        import json

        if self.json:
            self.records.append(record)
            return
        sys.stdout.write(json.dumps(record) + "\n" if self.jsonl else self.table(record))
        sys.stdout.flush()

    def close(self) -> None:
        """Prints `--json`'s list."""
        import json

        if self.json:
            json.dump(self.records, sys.stdout, indent=2)
            sys.stdout.write("\n")
            sys.stdout.flush()
