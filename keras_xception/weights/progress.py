"""Where a download's progress goes: Keras's bar, a text stream, or nowhere.

`progress=True` draws Keras's own `Progbar` on stdout, as
`keras.utils.get_file` does, so a notebook shows the same bar as for any Keras
download. A text stream (`sys.stderr`, a log file) gets a plain report
instead: one line redrawn with `\\r` on a terminal, or a line each time the
download passes another tenth of the file otherwise, so logs stay readable;
the percentage is always that of the bytes on the same line, also after a
resume. `False` shows nothing.

Keras is imported only to draw its bar.
"""

from __future__ import annotations

from keras_xception.errors import WeightsError

_STEPS = 10  # Lines a non-terminal stream gets for a file of known size.


def _size(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 100_000 else f"{n:,} bytes"


def check(progress) -> None:
    """Rejects a `progress` argument that is neither a bool nor a text stream.

    Raises:
        WeightsError: If `progress` is something else.
    """
    if isinstance(progress, bool) or callable(getattr(progress, "write", None)):
        return
    raise WeightsError(
        "`progress` must be True (Keras's progress bar on stdout), False "
        "(nothing) or a text stream such as sys.stderr. "
        f"Received: progress={progress!r}"
    )


class Progress:
    """Reports one download's messages and progress where the caller said.

    Args:
        target: `True`, `False` or a text stream (see the module docstring).
    """

    def __init__(self, target):
        check(target)
        self._stream = None if isinstance(target, bool) else target
        self._keras = target is True
        self._bar = None
        self._total = None
        self._shown = -1  # Last tenth (or byte count, on a terminal) reported.
        self._mid_line = False  # A bar is drawn and its line not ended.
        try:
            self._tty = self._stream is not None and self._stream.isatty()
        except (AttributeError, ValueError, OSError):
            self._tty = False

    @property
    def enabled(self) -> bool:
        return self._keras or self._stream is not None

    def _write(self, text: str) -> None:
        if self._stream is not None:
            self._stream.write(text)
            self._stream.flush()
        else:
            print(text, end="", flush=True)

    def message(self, text: str) -> None:
        """Prints one line of text (after ending a bar's line)."""
        if self.enabled:
            self.end_line()
            self._write(text + "\n")

    def start(self, total: int | None) -> None:
        """Starts counting bytes again from 0, out of `total` (or unknown)."""
        if not self.enabled:
            return
        self.end_line()
        self._total = total
        self._shown = -1
        if self._keras:
            from keras.utils import Progbar

            self._bar = Progbar(total)

    def update(self, done: int) -> None:
        """Reports that `done` bytes of the file are on disk."""
        if self._bar is not None:
            self._bar.update(done)
            self._mid_line = self._bar.target is None or done < self._bar.target
        elif self._stream is not None:
            if self._tty:
                self._draw_tty(done)
            else:
                self._draw_line(done)

    def _draw_tty(self, done: int) -> None:
        if self._total:
            text = f"{done * 100 // self._total:3d}% {_size(done)} of {_size(self._total)}"
        else:
            text = _size(done)
        self._write(f"\r  {text}")
        self._mid_line = True
        if self._total and done >= self._total:
            self.end_line()

    def _draw_line(self, done: int) -> None:
        if not self._total:
            return
        step = done * _STEPS // self._total
        if step > self._shown:
            self._shown = step
            self._write(
                f"  {done * 100 // self._total}% ({_size(done)} of {_size(self._total)})\n"
            )

    def end_line(self) -> None:
        """Ends a half-drawn bar's line."""
        if self._mid_line:
            self._write("\n")
            self._mid_line = False
