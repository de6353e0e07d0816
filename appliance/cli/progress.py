"""The CLI's progress bar: model fetch and convert callbacks drawn on stderr.

On a terminal it is a rich progress bar (one line per stage, redrawn in place); elsewhere
(systemd's journal, CI logs) it degrades to a few plain lines, one per stage and per 10 %, which
rich would otherwise print as a line per redraw.
"""

from __future__ import annotations

import sys
from typing import TextIO

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TaskProgressColumn, TextColumn


class TerminalProgress:
    """Draws progress callbacks on a stream (stderr by default)."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._stage = ""
        self._last_decile = -1
        self._bar: Progress | None = None
        self._task: TaskID | None = None

    def __call__(self, stage: str, fraction: float | None, detail: str = "") -> None:
        if self.tty:
            self._draw(stage, fraction, detail)
        else:
            self._line(stage, fraction, detail)
        self._stage = stage

    def convert_callback(self, stage: str, fraction: float) -> None:
        """Adapter for convert_bert's `progress(stage, fraction)`."""
        self(stage, fraction, "")

    def finish(self, message: str = "") -> None:
        """End the bar and print a closing message."""
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
            self._task = None
        if message:
            self.stream.write(message + "\n")
        self.stream.flush()
        self._stage = ""

    def _draw(self, stage: str, fraction: float | None, detail: str) -> None:
        if self._bar is None:
            self._bar = Progress(
                TextColumn("{task.description:<9}"),
                BarColumn(bar_width=28),
                TaskProgressColumn(),
                TextColumn("{task.fields[detail]}"),
                console=Console(file=self.stream),
            )
            self._bar.start()
        total = None if fraction is None else 1.0
        if self._task is None or stage != self._stage:
            if self._task is not None:
                self._bar.stop_task(self._task)
            self._task = self._bar.add_task(stage, total=total, detail=detail)
        self._bar.update(self._task, total=total, completed=fraction or 0.0, detail=detail)

    def _line(self, stage: str, fraction: float | None, detail: str) -> None:
        """A line per stage and per 10 %, for logs that keep every line."""
        if stage != self._stage:
            self._last_decile = -2
        decile = -1 if fraction is None else int(fraction * 10)
        if decile > self._last_decile:
            self._last_decile = decile
            self.stream.write(self.render(stage, fraction, detail) + "\n")
            self.stream.flush()

    @staticmethod
    def render(stage: str, fraction: float | None, detail: str) -> str:
        """The text of one plain progress line (without a newline)."""
        pct = "" if fraction is None else f" {min(max(fraction, 0.0), 1.0) * 100:3.0f}%"
        text = f"{stage:<9}{pct}"
        return f"{text} {detail}" if detail else text
