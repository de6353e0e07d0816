"""Overview: the box at a glance.

GPU gauges with sparklines (CPU and RAM on a box without a GPU), the models with their state,
memory, idle countdown and tokens per second, the daemon's request rate, queue, sessions and
sandboxes, and the latest events. Model states follow the events stream; the gauges and rates are
samples, taken every `sample_s` while this screen is shown.
"""

from __future__ import annotations

from collections.abc import Iterable

from textual import work
from textual.containers import Vertical
from textual.widget import Widget

from appliance.client.errors import NotAvailable
from appliance.client.records import DaemonEvent, DaemonStatus, GpuReport, HostSample
from tui.messages import GpuSampled, StatusLoaded, UsageLoaded
from tui.rates import RateMeter, generated_tokens
from tui.screens.dashboard import DashboardScreen
from tui.widgets.daemon_stats import DaemonStats
from tui.widgets.device_gauges import DeviceGauges
from tui.widgets.event_log import EventLog
from tui.widgets.model_table import ModelTable


class OverviewScreen(DashboardScreen):
    TITLE = "Overview"
    AUTO_FOCUS = "#overview-models"

    def __init__(self) -> None:
        super().__init__()
        self.rates = RateMeter()
        self.status: DaemonStatus | None = None
        self.gpu_missing = False
        self.usage_missing = False
        self.token_rates: dict[str, float | None] = {}
        """Tokens per second of each model, from the usage ledger's running totals."""

    def compose_body(self) -> Iterable[Widget]:
        yield Vertical(id="gauges")
        yield DaemonStats(id="stats")
        yield ModelTable(id="overview-models")
        yield EventLog(id="events")

    def on_mount(self) -> None:
        super().on_mount()
        self.query_one(EventLog).border_title = "events"
        self.query_one(ModelTable).border_title = "models"
        for event in self.context.recent_events:
            self.query_one(EventLog).add_event(event)
        self.set_interval(self.context.sample_s, self.sample)
        self.set_interval(1.0, self._tick)

    def reload(self) -> None:
        self.sample()

    def sample(self) -> None:
        if self.is_current or self.status is None:
            self.fetch_status()
            if not self.gpu_missing:
                self.fetch_gpu()

    def _tick(self) -> None:
        self.query_one(ModelTable).tick(self.now())

    @work(exclusive=True, group="overview-status")
    async def fetch_status(self) -> None:
        status = await self.call("Reading the daemon status", self.client.status())
        if status is not None:
            self.post_message(StatusLoaded(status))
        if not self.usage_missing:
            usage = await self.call("Reading usage", self.client.usage())
            if usage is not None:
                self.post_message(UsageLoaded(usage))

    @work(exclusive=True, group="overview-gpu")
    async def fetch_gpu(self) -> None:
        report = await self.call("Reading the GPU", self.client.gpu())
        if report is not None:
            self.post_message(GpuSampled(report))

    def on_status_loaded(self, message: StatusLoaded) -> None:
        status = self.status = message.status
        now = self.now()
        for m in status.models:
            tokens = generated_tokens(m.counters)
            if tokens is not None:
                self.token_rates[m.id] = self.rates.sample(f"tokens:{m.id}", now, tokens)
        requests = sum(m.counters.get("requests", 0) for m in status.models)
        request_rate = self.rates.sample("requests", now, requests)
        self.query_one(ModelTable).show_models(status.models, now, self.token_rates)
        self.query_one(DaemonStats).show_status(status, request_rate)
        if self.gpu_missing:
            self._show_host(GpuReport(gpus=[]))

    def on_usage_loaded(self, message: UsageLoaded) -> None:
        now = self.now()
        for model_id, row in message.usage.rows.items():
            tokens = generated_tokens({k: int(v) for k, v in row.items()})
            if tokens is not None:
                self.token_rates[model_id] = self.rates.sample(f"tokens:{model_id}", now, tokens)
        table = self.query_one(ModelTable)
        table.show_models(list(table.models.values()), now, self.token_rates)

    def on_gpu_sampled(self, message: GpuSampled) -> None:
        report = message.report
        gauges = self.query_one("#gauges")
        if not report.gpus:
            self._show_host(report)
            return
        wanted = [f"gpu-{g.index}" for g in report.gpus]
        if [w.id for w in gauges.children] != wanted:
            gauges.remove_children()
            gauges.mount_all([DeviceGauges.for_gpu(g.index) for g in report.gpus])
            self.call_after_refresh(self._show_gpus, report)
        else:
            self._show_gpus(report)

    def _show_gpus(self, report: GpuReport) -> None:
        for g in report.gpus:
            self.query_one(f"#gpu-{g.index}", DeviceGauges).show_gpu(g)

    def _show_host(self, report: GpuReport) -> None:
        gauges = self.query_one("#gauges")
        if not gauges.query("#host"):
            gauges.remove_children()
            gauges.mount(DeviceGauges.for_host())
            self.call_after_refresh(self._show_host, report)
            return
        model_memory = (
            (self.status.memory_used_bytes, self.status.memory_budget_bytes)
            if self.status
            else None
        )
        self.query_one("#host", DeviceGauges).show_host(report.host or HostSample(), model_memory)

    def show_not_available(self, action: str, error: NotAvailable) -> None:
        if action == "Reading usage":
            self.usage_missing = True
        elif action == "Reading the GPU":
            self.gpu_missing = True
            self._show_host(GpuReport(gpus=[]))
            self.query_one(EventLog).add_note(
                self.now(), "GPU telemetry (/api/gpu) is not available on this daemon"
            )
        else:
            self.query_one(DaemonStats).update(error.message)

    def apply_event(self, event: DaemonEvent) -> None:
        self.query_one(EventLog).add_event(event)
        model = event.data.get("model")
        if (
            event.type == "model.state"
            and isinstance(model, str)
            and isinstance(event.data.get("state"), str)
        ):
            self.query_one(ModelTable).set_state(model, event.data["state"])
            self.fetch_status()
