"""Pure logic of the console: rates from counters, the sparkline, the trace
filter, and the records' tolerance of daemons that answer with more, fewer or other fields."""

from __future__ import annotations

from appliance.client.records import (
    DaemonEvent,
    DaemonStatus,
    GpuReport,
    ModelInfo,
    RunResult,
    Trace,
    TranscriptEntry,
    TurnEvent,
)
from tui.rates import RateMeter, generated_tokens
from tui.screens.traces import matches, parse_filter
from tui.widgets.event_log import describe
from tui.widgets.gauge import spark_line


def test_rate_meter_turns_running_totals_into_rates() -> None:
    meter = RateMeter(window_s=60)
    assert meter.sample("requests", 100.0, 10) is None, "one sample is no rate yet"
    assert meter.sample("requests", 102.0, 16) == 3.0
    assert meter.sample("requests", 102.0, 20) == 3.0, "no time passed: keep the last rate"
    assert meter.sample("requests", 104.0, 2) is None, (
        "a counter that went down (restart) starts over"
    )
    assert meter.sample("requests", 106.0, 6) == 2.0
    assert meter.sample("requests", 300.0, 100) is None, "a gap longer than the window says nothing"


def test_generated_tokens_reads_the_counter_by_any_of_its_names() -> None:
    assert generated_tokens({"requests": 3}) is None
    assert generated_tokens({"tokens_out": 40, "requests": 3}) == 40
    assert generated_tokens({"completion_tokens": 5, "tokens_out": 40}) == 5


def test_spark_line_is_on_a_fixed_scale_and_right_aligned() -> None:
    assert spark_line([0, 50, 100], 5) == "   ▄█"
    assert spark_line([100.0] * 10, 3) == "███", "only the newest samples that fit"
    assert spark_line([2.0, 2.0], 2) == "  ", "a flat 2% stays low, it does not fill the box"


def test_trace_filter_splits_daemon_fields_from_words() -> None:
    assert parse_filter("model:tiny slow session:ses_1 POST") == ("tiny", "ses_1", ["slow", "post"])
    assert parse_filter("model: x") == (None, None, ["model:", "x"])
    trace = Trace.from_json(
        {"id": "t", "kind": "request", "name": "POST /v1/chat/completions", "status": "ok"}
    )
    assert matches(trace, ["post", "chat"]) and not matches(trace, ["error"])


def test_records_tolerate_missing_unknown_and_mistyped_fields() -> None:
    m = ModelInfo.from_json({"id": "m", "state": "ready", "memory_bytes": "lots", "extra": 1})
    assert (m.id, m.state, m.memory_bytes, m.resident) == ("m", "ready", 0, True)
    status = DaemonStatus.from_json(
        {
            "models": [{"id": "a"}],
            "scheduler": {"queue_depth": 3},
            "sandboxes": {"sandboxes": 2, "available": True},
        }
    )
    assert (status.queue_depth, status.sandboxes, status.sessions) == (3, 2, None)
    no_gpu = GpuReport.from_json(
        {
            "gpus": [],
            "message": "no NVIDIA driver found",
            "host": {"cpu_percent": 12.5, "memory_used_bytes": 1024, "memory_total_bytes": 4096},
        }
    )
    assert no_gpu.reason == "no NVIDIA driver found" and no_gpu.host is not None
    assert no_gpu.host.cpu_percent == 12.5
    run = RunResult.from_json({"status": "timeout", "exit_code": None, "signal": 9})
    assert (run.status, run.exit_code, run.signal, run.stdout) == ("timeout", None, 9, "")


def test_transcript_entries_and_turn_events_keep_tool_calls_apart() -> None:
    entry = TranscriptEntry.from_json(
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "c1", "function": {"name": "run_code", "arguments": '{"code": "print(1)"}'}}
            ],
        }
    )
    assert entry.content == "" and entry.tool_calls[0].name == "run_code"
    call = TurnEvent.from_frame(
        "tool_call", {"id": "c2", "name": "search", "arguments": {"q": "x"}}
    )
    assert (
        call.kind == "tool_call"
        and call.tool_call is not None
        and '"q": "x"' in call.tool_call.arguments
    )
    result = TurnEvent.from_frame(None, {"type": "tool_result", "result": {"rows": 2}})
    assert result.kind == "tool_result" and '"rows": 2' in result.text
    error = TurnEvent.from_frame("error", {"error": {"message": "model failed"}})
    assert (error.kind, error.text) == ("error", "model failed")
    token = TurnEvent.from_frame(None, {"type": "token", "text": "Hel"})
    assert (token.kind, token.text) == ("token", "Hel")


def test_event_lines_put_the_subject_first() -> None:
    state = DaemonEvent.from_json(
        {"seq": 1, "type": "model.state", "ts": 0, "model": "tiny", "state": "ready"}
    )
    assert describe(state) == "tiny → ready"
    fetch = DaemonEvent.from_json(
        {
            "seq": 2,
            "type": "model.fetch",
            "ts": 0,
            "model": "m",
            "stage": "download",
            "fraction": 0.25,
        }
    )
    assert describe(fetch) == "m download 25%"
    run = DaemonEvent.from_json(
        {"seq": 3, "type": "sandbox.run", "ts": 0, "sandbox": "s1", "status": "ok", "note": None}
    )
    assert describe(run) == "s1 status=ok"
    pull = DaemonEvent.from_json(
        {"seq": 4, "type": "model.pull", "ts": 0, "model": "m", "state": "downloading"}
        | {"pull": "pull_1", "bytes": 40, "total": 100, "rate": 5.0, "error": None}
    )
    assert describe(pull) == "m pull downloading 40%"


def test_every_screen_action_has_a_command_palette_entry() -> None:
    from textual.binding import Binding

    from tui.app import SCREEN_CLASSES
    from tui.commands import ACTIONS

    in_palette = {(mode, action) for _, _, mode, action in ACTIONS}
    navigation = {"focus_list", "leave_editor"}  # escape: moving focus, not an action on the daemon
    for mode, cls in SCREEN_CLASSES.items():
        for b in cls.__dict__.get("BINDINGS", []):
            assert isinstance(b, Binding)
            action = b.action.split("(")[0]
            if action not in navigation:
                assert (mode, action) in in_palette, (
                    f"{mode}: key {b.key} ({action}) has no palette entry"
                )


def test_every_screen_composes_its_own_body() -> None:
    from tui.app import SCREEN_CLASSES
    from tui.screens.dashboard import DashboardScreen

    assert len(SCREEN_CLASSES) == 5
    for mode, cls in SCREEN_CLASSES.items():
        assert cls.compose_body is not DashboardScreen.compose_body, f"{mode} shows an empty frame"
