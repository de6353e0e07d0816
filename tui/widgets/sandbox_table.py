"""The live sandboxes: id, language, busy, runs so far, idle time and time left."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import DataTable

from appliance.client.records import Sandbox
from tui import format as fmt


class SandboxTable(DataTable[str | Text]):
    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id, cursor_type="row")
        self.sandboxes: dict[str, Sandbox] = {}

    def on_mount(self) -> None:
        for key, label in (
            ("id", "Sandbox"),
            ("language", "Lang"),
            ("busy", "Busy"),
            ("execs", "Runs"),
            ("expires", "Expires"),
        ):
            self.add_column(label, key=key)

    @property
    def selected(self) -> Sandbox | None:
        if not self.row_count:
            return None
        key = self.coordinate_to_cell_key(self.cursor_coordinate).row_key.value
        return self.sandboxes.get(key or "")

    def show_sandboxes(self, sandboxes: list[Sandbox]) -> None:
        keep = self.selected.id if self.selected else None
        self.sandboxes = {s.id: s for s in sandboxes}
        self.clear()
        for s in sandboxes:
            self.add_row(
                fmt.short_id(s.id, 16),
                s.language,
                Text("busy", style="yellow") if s.busy else "",
                str(s.execs),
                fmt.countdown(s.expires_in_s),
                key=s.id,
            )
        if keep in self.sandboxes:
            self.move_cursor(row=self.get_row_index(keep))

    def select(self, sandbox_id: str) -> None:
        if sandbox_id in self.sandboxes:
            self.move_cursor(row=self.get_row_index(sandbox_id))
