"""The pulls under way, one line each with a progress bar: fed by `model.pull` events.

Hidden while there is no pull to show, so the models screen looks as before until one starts.
A finished pull stays listed with its outcome (done, failed with the reason, cancelled).
"""

from __future__ import annotations

from typing import Any

from rich.console import Group
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text
from textual.widgets import Static

from tui import format as fmt

STYLES = {"done": "green", "failed": "red", "cancelled": "yellow"}


class PullList(Static):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.pulls: dict[str, dict[str, Any]] = {}
        self.display = False

    def apply(self, event: dict[str, Any]) -> None:
        """Take one `model.pull` event's data."""
        pull = event.get("pull")
        if not isinstance(pull, str):
            return
        self.pulls[pull] = event
        self.display = True
        self.refresh_lines()

    def refresh_lines(self) -> None:
        grid = Table.grid(padding=(0, 1))
        grid.add_column(no_wrap=True)
        grid.add_column(width=24)
        grid.add_column(overflow="fold")
        for p in list(self.pulls.values())[-5:]:
            done, total = int(p.get("bytes") or 0), p.get("total")
            state = str(p.get("state") or "")
            bar = ProgressBar(total=float(total) if total else None, completed=done, width=24)
            if state in STYLES:
                detail = Text(state + (f": {p['error']}" if p.get("error") else ""), STYLES[state])
            else:
                of = f" of {fmt.size(total)}" if total else ""
                detail = Text(f"{fmt.size(done)}{of} at {fmt.size(p.get('rate') or 0)}/s")
            grid.add_row(Text(str(p.get("model") or "?"), style="bold"), bar, detail)
        self.update(Group(Text("pulls", style="dim"), grid))
