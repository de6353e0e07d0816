"""Progress of long model operations (download, extract, convert) and its terminal rendering.

Fetching a model can take minutes on a slow link, so every step reports through one callback
shape, `progress(stage, fraction, detail)`: `stage` is a short word ("download", "extract",
"convert", "done"), `fraction` runs 0..1 within the stage or is None when the total is unknown,
and `detail` is a human line (a file name, bytes so far). The daemon can forward these as events;
the CLI draws them with TerminalProgress, a single-line bar on stderr that degrades to a few plain
lines when stderr is not a terminal (systemd journal, CI logs).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO

FetchProgress = Callable[[str, "float | None", str], None]
"""progress(stage, fraction or None, detail)."""


def no_progress(stage: str, fraction: float | None, detail: str) -> None:
    """The callback used when the caller passes none."""


def human_bytes(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"  # pragma: no cover - loop always returns


class TerminalProgress:
    """Draws progress callbacks as one line on a stream (stderr by default)."""

    width = 28
    """Characters of the bar itself."""

    def __init__(self, stream: TextIO | None = None, *, min_interval_s: float = 0.1) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.min_interval_s = min_interval_s
        self._stage = ""
        self._last_draw = 0.0
        self._last_decile = -1
        self._open_line = False

    def __call__(self, stage: str, fraction: float | None, detail: str = "") -> None:
        new_stage = stage != self._stage
        if new_stage and self._open_line:
            self.stream.write("\n")
            self._open_line = False
        self._stage = stage
        if self.tty:
            now = time.monotonic()
            final = fraction is not None and fraction >= 1.0
            if new_stage or final or now - self._last_draw >= self.min_interval_s:
                self._last_draw = now
                self.stream.write("\r\x1b[K" + self.render(stage, fraction, detail))
                self._open_line = True
        else:
            if new_stage:
                self._last_decile = -2
            decile = -1 if fraction is None else int(fraction * 10)
            if decile > self._last_decile:  # a line per stage and per 10 %
                self._last_decile = decile
                self.stream.write(self.render(stage, fraction, detail) + "\n")
        self.stream.flush()

    def convert_callback(self, stage: str, fraction: float) -> None:
        """Adapter for convert_bert's `progress(stage, fraction)`."""
        self(stage, fraction, "")

    def finish(self, message: str = "") -> None:
        """End the bar's line and print a closing message."""
        if self._open_line:
            self.stream.write("\n")
            self._open_line = False
        if message:
            self.stream.write(message + "\n")
        self.stream.flush()
        self._stage = ""

    def render(self, stage: str, fraction: float | None, detail: str) -> str:
        """The text of one progress line (without a newline)."""
        if fraction is None:
            bar = "[" + "." * self.width + "]     "
        else:
            f = min(max(fraction, 0.0), 1.0)
            filled = round(f * self.width)
            bar = "[" + "#" * filled + "." * (self.width - filled) + f"] {f * 100:3.0f}%"
        text = f"{stage:<9} {bar}"
        return f"{text} {detail}" if detail else text
