"""A live gauge: a figure's name and value, a bar of its share, and a sparkline of its history.

Used for GPU utilisation, GPU memory and power, or CPU and RAM on a box without a GPU. The
sparkline is drawn on a fixed 0-100% scale (textual's Sparkline scales to the data's own range,
which makes a flat 2% look like a cliff), newest sample on the right.
"""

from __future__ import annotations

from collections import deque

from rich.text import Text
from textual.app import ComposeResult
from textual.widget import Widget
from textual.widgets import Label, ProgressBar, Static

BLOCKS = " ▁▂▃▄▅▆▇█"


def spark_line(shares: list[float], width: int) -> str:
    """The last `width` shares (0..100) as block characters, right-aligned."""
    recent = shares[-width:] if width > 0 else []
    cells = [BLOCKS[min(len(BLOCKS) - 1, round(s / 100 * (len(BLOCKS) - 1)))] for s in recent]
    return "".join(cells).rjust(max(width, 0), " ")


class ResourceGauge(Widget):
    """One resource over time. `record(share, text)` adds a sample (share in 0..100 or None)."""

    HISTORY = 240

    def __init__(self, title: str, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.title = title
        self.history: deque[float] = deque(maxlen=self.HISTORY)

    def compose(self) -> ComposeResult:
        yield Label(f"{self.title}  -", classes="gauge-title")
        yield ProgressBar(total=100, show_eta=False, show_percentage=False, classes="gauge-bar")
        yield Static(classes="gauge-spark")

    def record(self, share: float | None, text: str) -> None:
        self.query_one(".gauge-title", Label).update(f"{self.title}  {text}")
        bar = self.query_one(ProgressBar)
        if share is None:  # unknown: an empty bar (an indeterminate one would animate forever)
            bar.update(total=100, progress=0)
            return
        share = max(0.0, min(100.0, share))
        bar.update(total=100, progress=share)
        self.history.append(share)
        self._draw_spark()

    def on_resize(self) -> None:
        self._draw_spark()

    def _draw_spark(self) -> None:
        spark = self.query_one(".gauge-spark", Static)
        spark.update(Text(spark_line(list(self.history), spark.size.width or self.size.width), style="cyan"))
