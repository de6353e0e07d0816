"""The table of models: state, pin, memory, idle countdown, tokens per second, queue.

Rows are keyed by model id, so an event can change one row's state in place and the cursor stays
on the model the user was looking at when the whole table is reloaded.
"""

from __future__ import annotations

from msgspec.structs import replace
from rich.text import Text
from textual.widgets import DataTable

from appliance.client.records import ModelInfo
from tui import format as fmt

COLUMNS = (
    ("model", "Model"),
    ("state", "State"),
    ("pin", "Pin"),
    ("memory", "Memory"),
    ("idle", "Idle in"),
    ("rate", "tok/s"),
    ("queue", "Queue"),
)


def state_text(state: str) -> Text:
    return Text(state, style=fmt.STATE_STYLES.get(state, ""))


class ModelTable(DataTable[str | Text]):
    """Models as rows; `show_models` replaces them all, `set_state` changes one."""

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id, cursor_type="row", zebra_stripes=False)
        self.models: dict[str, ModelInfo] = {}

    def on_mount(self) -> None:
        for key, label in COLUMNS:
            self.add_column(label, key=key)

    @property
    def selected(self) -> ModelInfo | None:
        if not self.row_count:
            return None
        key = self.coordinate_to_cell_key(self.cursor_coordinate).row_key.value
        return self.models.get(key or "")

    def show_models(
        self, models: list[ModelInfo], now: float, rates: dict[str, float | None]
    ) -> None:
        keep = self.selected.id if self.selected else None
        self.models = {m.id: m for m in models}
        self.clear()
        for m in models:
            self.add_row(*self._cells(m, now, rates.get(m.id)), key=m.id)
        if keep in self.models:
            self.move_cursor(row=self.get_row_index(keep))

    def set_state(self, model_id: str, state: str) -> None:
        if model_id not in self.models:
            return
        self.models[model_id] = replace(self.models[model_id], state=state)
        self.update_cell(model_id, "state", state_text(state))

    def tick(self, now: float) -> None:
        """Refresh the idle countdowns."""
        for m in self.models.values():
            self.update_cell(m.id, "idle", self._idle(m, now))

    @staticmethod
    def _idle(m: ModelInfo, now: float) -> str:
        if m.pinned and m.resident:
            return "pinned"
        return fmt.countdown(m.idle_deadline - now) if m.idle_deadline is not None else "-"

    def _cells(self, m: ModelInfo, now: float, rate: float | None) -> tuple[str | Text, ...]:
        memory = m.memory_bytes if m.resident else 0
        return (
            fmt.short_id(m.id, 28),
            state_text(m.state),
            "●" if m.pinned else "",
            fmt.size(memory),
            self._idle(m, now),
            "-" if rate is None else f"{rate:.1f}",
            f"{m.active}/{m.waiting}" if (m.active or m.waiting) else "-",
        )
