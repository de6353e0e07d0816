"""The selected model in full: source, sizes, load history, a load's progress and its last error."""

from __future__ import annotations

from rich.console import Group
from rich.table import Table
from rich.text import Text
from textual.widgets import Static

from appliance.client.records import ModelInfo
from tui import format as fmt


class ModelDetail(Static):
    """`show_model(model, progress)`; progress is (stage, fraction) of a fetch or load under way."""

    def show_model(
        self, m: ModelInfo | None, progress: tuple[str, float | None] | None = None
    ) -> None:
        if m is None:
            self.update(Text("No model selected.", style="dim"))
            return
        grid = Table.grid(padding=(0, 2))
        grid.add_column(style="dim", no_wrap=True)
        grid.add_column(overflow="fold")
        grid.add_row("model", Text(m.id, style="bold"))
        grid.add_row(
            "state",
            Text(
                m.state + ("  (pinned)" if m.pinned else ""),
                style=fmt.STATE_STYLES.get(m.state, ""),
            ),
        )
        grid.add_row("kind", f"{m.kind}, context {m.context_size or '-'}")
        grid.add_row(
            "memory",
            f"{fmt.size(m.memory_bytes if m.resident else 0)} "
            f"(estimate {fmt.size(m.memory_estimate_bytes)})",
        )
        grid.add_row("loads", f"{m.load_count}, last took {fmt.duration_ms(m.last_load_ms)}")
        grid.add_row("source", m.source or "-")
        parts: list[Table | Text] = [grid]
        if progress is not None and m.state in ("loading", "unloaded"):
            stage, fraction = progress
            share = "" if fraction is None else f" {fraction * 100:.0f}%"
            parts.append(Text(f"{stage}{share}", style="cyan"))
        if m.last_error:
            parts.append(Text(f"last error: {m.last_error}", style="red"))
        self.update(Group(*parts))
