"""One line of the daemon's figures: request rate, queue depth, active requests, sessions,
sandboxes and the model memory budget."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

from appliance.client.records import DaemonStatus
from tui import format as fmt


class DaemonStats(Static):
    def show_status(self, status: DaemonStatus, request_rate: float | None) -> None:
        def item(label: str, value: str) -> tuple[tuple[str, str], tuple[str, str]]:
            return ((f"{label} ", "dim"), (f"{value}  ", "bold"))

        parts = [
            *item("req/s", "-" if request_rate is None else f"{request_rate:.2f}"),
            *item("queue", str(status.queue_depth)),
            *item("active", str(status.active_requests)),
            *item("sess", "-" if status.sessions is None else str(status.sessions)),
            *item("sbx", "-" if status.sandboxes is None else str(status.sandboxes)),
            *item(
                "model mem",
                f"{fmt.size(status.memory_used_bytes)}/{fmt.size(status.memory_budget_bytes)}",
            ),
        ]
        self.update(Text.assemble(*parts))
