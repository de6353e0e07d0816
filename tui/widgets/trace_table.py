"""Recent traces: when, what, which model or session, how long, and whether it went well."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import DataTable

from appliance.client.records import Trace
from tui import format as fmt


class TraceTable(DataTable[str | Text]):
    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id, cursor_type="row")
        self.traces: dict[str, Trace] = {}

    def on_mount(self) -> None:
        for key, label in (
            ("time", "Time"),
            ("name", "Trace"),
            ("model", "Model"),
            ("session", "Session"),
            ("took", "Took"),
            ("status", "Status"),
        ):
            self.add_column(label, key=key)

    @property
    def selected(self) -> Trace | None:
        if not self.row_count:
            return None
        key = self.coordinate_to_cell_key(self.cursor_coordinate).row_key.value
        return self.traces.get(key or "")

    def show_traces(self, traces: list[Trace]) -> None:
        keep = self.selected.id if self.selected else None
        self.traces = {t.id: t for t in traces}
        self.clear()
        for t in traces:
            status = Text(t.status, style="green" if t.status == "ok" else "bold red")
            what = t.name if t.kind in ("request", "") else f"{t.kind}: {t.name}"
            self.add_row(
                fmt.clock(t.started),
                fmt.short_id(what, 30),
                fmt.short_id(t.model or "-", 16),
                fmt.short_id(t.session_id or "-", 14),
                fmt.duration_ms(t.duration_ms),
                status,
                key=t.id,
            )
        if keep in self.traces:
            self.move_cursor(row=self.get_row_index(keep))
