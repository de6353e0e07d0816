"""A panel standing in for a part of a screen that cannot be shown: the daemon has no such route
("not available on this daemon"), or there is nothing yet to show."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static


class Notice(Static):
    def say(self, title: str, detail: str = "") -> None:
        self.update(
            Text.assemble((title, "bold"), "\n", (detail, "dim"))
            if detail
            else Text(title, style="bold")
        )
