"""A trace's spans as a timeline: one row per span, a bar placed by its start and length.

The bars are scaled to the widget's width whenever it is drawn or resized, so the timeline uses
the whole width of a large terminal and still fits 80 columns.
"""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

from appliance.client.records import Trace
from tui import format as fmt

NAME_WIDTH = 18
TIME_WIDTH = 9


def timeline(t: Trace, width: int) -> Text:
    head = Text.assemble(
        (f"{t.kind} {t.name}".strip(), "bold"),
        f"  {fmt.duration_ms(t.duration_ms)}  ",
        (t.status, "green" if t.status == "ok" else "bold red"),
        (f"  {t.id}", "dim"),
    )
    if not t.spans:
        return Text.assemble(head, "\n", ("(no spans recorded)", "dim"))
    total = max([t.duration_ms, *(s.start_ms + s.duration_ms for s in t.spans)]) or 1.0
    bar_width = max(10, width - NAME_WIDTH - TIME_WIDTH - 2)
    lines = [head]
    for s in t.spans:
        length = max(1, round(s.duration_ms / total * bar_width))
        start = min(int(s.start_ms / total * bar_width), bar_width - length)
        name = fmt.short_id(("  " if s.parent else "") + s.name, NAME_WIDTH).ljust(NAME_WIDTH)
        lines.append(
            Text.assemble(
                (name, "cyan"),
                " ",
                " " * start,
                ("█" * length, "magenta"),
                " " * (bar_width - start - length),
                " ",
                (fmt.duration_ms(s.duration_ms).rjust(TIME_WIDTH), "dim"),
            )
        )
    return Text("\n").join(lines)


class SpanTimeline(Static):
    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.trace: Trace | None = None

    def show_trace(self, trace: Trace | None) -> None:
        self.trace = trace
        self._draw()

    def on_resize(self) -> None:
        self._draw()

    def _draw(self) -> None:
        if self.trace is None:
            self.update(Text("Select a trace to see its spans.", style="dim"))
        else:
            self.update(timeline(self.trace, self.content_size.width or 80))
