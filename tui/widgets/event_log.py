"""The latest daemon events, one line each, newest at the bottom."""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual.widgets import RichLog

from appliance.client.records import DaemonEvent
from tui import format as fmt

_KIND_STYLES = {
    "model": "cyan",
    "sandbox": "magenta",
    "session": "green",
    "error": "bold red",
    "daemon": "yellow",
}


def describe(event: DaemonEvent) -> str:
    """The event's fields in a short line: the subject first, then the rest as key=value."""
    d: dict[str, Any] = dict(event.data)
    subject = ""
    for key in ("model", "sandbox", "session", "session_id", "agent"):
        if key in d:
            subject = str(d.pop(key))
            break
    if event.type == "model.state" and "state" in d:
        return f"{subject} → {d.pop('state')}" + (f"  {d.pop('error')}" if d.get("error") else "")
    if event.type == "model.fetch" and isinstance(d.get("fraction"), int | float):
        return f"{subject} {d.get('stage', '')} {d['fraction'] * 100:.0f}%"
    if event.type == "model.pull":
        share = (
            f" {d['bytes'] / d['total'] * 100:.0f}%" if d.get("total") and d.get("bytes") else ""
        )
        error = f"  {d['error']}" if d.get("error") else ""
        return f"{subject} pull {d.get('state', '')}{share}{error}"
    rest = " ".join(f"{k}={v}" for k, v in d.items() if v not in (None, "", [], {}))
    return f"{subject} {rest}".strip()


class EventLog(RichLog):
    """A bounded log of events; `add_event` appends one, `add_note` a line of the console's own."""

    def __init__(self, *, id: str | None = None, max_lines: int = 500) -> None:
        super().__init__(id=id, max_lines=max_lines, wrap=False, markup=False, auto_scroll=True)

    def add_event(self, event: DaemonEvent) -> None:
        family = event.type.split(".", 1)[0]
        self.write(
            Text.assemble(
                (fmt.clock(event.ts), "dim"),
                " ",
                (f"{event.type:<16}", _KIND_STYLES.get(family, "")),
                " ",
                describe(event),
            )
        )

    def add_note(self, ts: float, text: str, style: str = "italic") -> None:
        self.write(Text.assemble((fmt.clock(ts), "dim"), " ", (text, style)))
