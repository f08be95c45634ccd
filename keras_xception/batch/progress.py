"""Progress of a batch job on stderr: images done, images per second, ETA."""

from __future__ import annotations

import time

# Seconds between two progress lines.
INTERVAL = 5.0


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{seconds:02d}s"
    return f"{seconds}s"


class Progress:
    """Counts processed inputs and prints a line at most every `interval` seconds.

    Args:
        kind: The command's name, at the start of each line.
        total: Inputs this run processes.
        stream: A text stream (stderr), or `None` for no output.
        interval: Seconds between lines.
    """

    def __init__(self, kind, total, stream, interval=INTERVAL):
        self.kind, self.total, self.stream = kind, total, stream
        self.interval = interval
        self.done = 0
        # The rate is measured from the first result on (not from the
        # start, which includes building the model).
        self.first = None
        self.last = time.monotonic()
        self.printed = None

    def line(self) -> str:
        """The current state as one line."""
        text = f"{self.kind}: {self.done:,}/{self.total:,} images"
        if self.first is None or self.done == self.first[1]:
            return text  # No rate until results after the first have come.
        start, count = self.first
        elapsed = time.monotonic() - start
        rate = (self.done - count) / elapsed if elapsed > 0 else 0.0
        text += f", {rate:.1f} images/s"
        if self.done < self.total and rate > 0:
            text += f", ETA {_duration((self.total - self.done) / rate)}"
        return text

    def update(self, count: int) -> None:
        """Adds `count` processed inputs; prints a line if one is due."""
        now = time.monotonic()
        self.done += count
        if self.first is None:
            self.first = (now, self.done)
        if self.stream is not None and now - self.last >= self.interval:
            self.last = now
            self._print()

    def _print(self):
        self.printed = self.done
        print(self.line(), file=self.stream, flush=True)

    def close(self) -> None:
        """Prints the final line, unless the last one printed had this count."""
        if self.stream is not None and self.printed != self.done:
            self._print()
