"""A live gauge: a figure's name and value, a bar of its share, and a sparkline of its history.

Used for GPU utilisation, GPU memory and power, or CPU and RAM on a box without a GPU. The
sparkline is drawn on a fixed 0-100% scale (textual's Sparkline scales to the data's own range,
which makes a flat 2% look like a cliff), newest sample on the right.

A sample may arrive before the gauge has composed its parts (a status poll that lands while the
screen is still mounting, seen on a loaded machine): the gauge keeps the latest sample and its
history itself and shows them once its parts are mounted.
"""

from __future__ import annotations

from collections import deque

from rich.text import Text
from textual.app import ComposeResult
from textual.css.query import NoMatches
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
        self.text = "-"
        """The latest sample's value as shown."""
        self.share: float | None = None
        """The latest sample's share (0..100), None when unknown."""

    def compose(self) -> ComposeResult:
        yield Label(f"{self.title}  {self.text}", classes="gauge-title")
        yield ProgressBar(total=100, show_eta=False, show_percentage=False, classes="gauge-bar")
        yield Static(classes="gauge-spark")

    def on_mount(self) -> None:
        self._show()  # what was recorded before the parts existed

    def record(self, share: float | None, text: str) -> None:
        self.text = text
        self.share = None if share is None else max(0.0, min(100.0, share))
        if self.share is not None:
            self.history.append(self.share)
        self._show()

    def on_resize(self) -> None:
        self._show()

    def _show(self) -> None:
        try:
            title = self.query_one(".gauge-title", Label)
            bar = self.query_one(ProgressBar)
            spark = self.query_one(".gauge-spark", Static)
        except NoMatches:  # not composed yet: on_mount shows the latest sample
            return
        title.update(f"{self.title}  {self.text}")
        # unknown: an empty bar (an indeterminate one would animate forever)
        bar.update(total=100, progress=self.share or 0)
        spark.update(
            Text(spark_line(list(self.history), spark.size.width or self.size.width), style="cyan")
        )
