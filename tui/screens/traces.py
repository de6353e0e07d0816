"""Traces and logs: recent traces, the selected one's spans as a timeline, usage totals and the
daemon's event log.

The filter line takes `model:ID`, `session:ID` (asked of the daemon) and free words (matched
against the trace's kind and name here). Keys: / to filter, enter opens a trace's spans.
"""

from __future__ import annotations

from collections.abc import Iterable

from rich.text import Text
from textual import on, work
from textual.binding import Binding
from textual.containers import Vertical
from textual.widget import Widget
from textual.widgets import DataTable, Input, Static, TabbedContent, TabPane

from appliance.client.errors import NotAvailable
from appliance.client.records import DaemonEvent, Trace
from tui.messages import TraceLoaded, TracesLoaded, UsageLoaded
from tui.screens.dashboard import DashboardScreen
from tui.widgets.event_log import EventLog
from tui.widgets.notice import Notice
from tui.widgets.span_timeline import SpanTimeline
from tui.widgets.trace_table import TraceTable

USAGE_FIGURES = (
    "requests",
    "tokens_in",
    "tokens_out",
    "busy_seconds",
    "gpu_seconds",
    "energy_j",
    "sandbox_cpu_s",
)
"""The usage totals shown, in this order, when the daemon reports them."""

RELOAD_ON = ("session.turn.finished", "sandbox.run", "trace.")


def parse_filter(text: str) -> tuple[str | None, str | None, list[str]]:
    """(model, session, words) from a filter line like "model:tiny slow"."""
    model = session = None
    words = []
    for token in text.split():
        key, sep, value = token.partition(":")
        if sep and key == "model" and value:
            model = value
        elif sep and key in ("session", "session_id") and value:
            session = value
        else:
            words.append(token.lower())
    return model, session, words


def matches(trace: Trace, words: list[str]) -> bool:
    haystack = f"{trace.kind} {trace.name} {trace.status} {trace.model or ''}".lower()
    return all(w in haystack for w in words)


class TracesScreen(DashboardScreen):
    TITLE = "Traces"
    AUTO_FOCUS = "#trace-table"
    BINDINGS = [
        Binding("slash", "filter", "Filter"),
        Binding("r", "reload", "Reload", show=False),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.filter_text = ""

    def compose_body(self) -> Iterable[Widget]:
        with TabbedContent(id="traces-tabs"):
            with TabPane("Traces", id="tab-traces"):
                yield Vertical(
                    Input(placeholder="filter: model:ID session:ID words", id="trace-filter"),
                    Notice(id="traces-notice"),
                    TraceTable(id="trace-table"),
                    SpanTimeline(id="span-timeline"),
                    Static(id="usage"),
                )
            with TabPane("Log", id="tab-log"):
                yield EventLog(id="trace-log")

    def on_mount(self) -> None:
        super().on_mount()
        self.query_one("#traces-notice").display = False
        self.query_one(SpanTimeline).border_title = "spans"
        for event in self.context.recent_events:
            self.query_one("#trace-log", EventLog).add_event(event)

    def reload(self) -> None:
        self.fetch_traces(self.filter_text)
        self.fetch_usage()

    @work(exclusive=True, group="traces-list")
    async def fetch_traces(self, filter_text: str) -> None:
        model, session, words = parse_filter(filter_text)
        traces = await self.call(
            "Listing traces", self.client.traces(model=model, session_id=session)
        )
        if traces is not None:
            self.post_message(TracesLoaded([t for t in traces if matches(t, words)]))

    @work(exclusive=True, group="traces-usage")
    async def fetch_usage(self) -> None:
        usage = await self.call("Reading usage", self.client.usage())
        if usage is not None:
            self.post_message(UsageLoaded(usage))

    @work(exclusive=True, group="trace-detail")
    async def fetch_trace(self, trace_id: str) -> None:
        trace = await self.call("Reading the trace", self.client.trace(trace_id))
        if trace is not None:
            self.post_message(TraceLoaded(trace))

    def on_traces_loaded(self, message: TracesLoaded) -> None:
        table = self.query_one(TraceTable)
        table.show_traces(message.traces)
        table.border_title = f"traces ({len(message.traces)})"
        self._show_selected()

    def on_trace_loaded(self, message: TraceLoaded) -> None:
        selected = self.query_one(TraceTable).selected
        if selected is not None and selected.id == message.trace.id:
            self.query_one(SpanTimeline).show_trace(message.trace)

    def on_usage_loaded(self, message: UsageLoaded) -> None:
        figures = message.usage.figures
        totals = {
            k.removeprefix("total."): v for k, v in figures.items() if k.startswith("total.")
        } or figures
        shown = [(k, totals[k]) for k in USAGE_FIGURES if k in totals] or sorted(totals.items())[:5]
        line = (
            "   ".join(f"{k.replace('_', ' ')} {v:,.6g}" for k, v in shown)
            if shown
            else "no usage recorded yet"
        )
        self.query_one("#usage", Static).update(Text.assemble(("usage ", "bold dim"), line))

    @on(DataTable.RowHighlighted, "#trace-table")
    def _show_selected(self) -> None:
        trace = self.query_one(TraceTable).selected
        self.query_one(SpanTimeline).show_trace(trace)
        if trace is not None and not trace.spans:
            self.fetch_trace(trace.id)

    @on(Input.Submitted, "#trace-filter")
    def apply_filter(self, event: Input.Submitted) -> None:
        self.filter_text = event.value.strip()
        self.fetch_traces(self.filter_text)
        self.query_one(TraceTable).focus()

    def action_filter(self, text: str | None = None) -> None:
        self.query_one(TabbedContent).active = "tab-traces"
        box = self.query_one("#trace-filter", Input)
        if text is not None:
            box.value = text
            self.filter_text = text
            self.fetch_traces(text)
        box.focus()

    def action_reload(self) -> None:
        self.reload()

    def show_not_available(self, action: str, error: NotAvailable) -> None:
        if action == "Reading usage":
            self.query_one("#usage", Static).update(
                Text("usage: not available on this daemon", style="dim")
            )
            return
        if action in ("Listing traces", "Reading the trace"):
            notice = self.query_one("#traces-notice", Notice)
            notice.say("Traces are not available on this daemon.", error.message)
            notice.display = True
            self.query_one(TraceTable).display = False
            self.query_one(SpanTimeline).display = False
            return
        super().show_not_available(action, error)

    def apply_event(self, event: DaemonEvent) -> None:
        self.query_one("#trace-log", EventLog).add_event(event)
        if any(event.type.startswith(prefix) for prefix in RELOAD_ON):
            self.fetch_traces(self.filter_text)
