"""Traces in memory: current trace, nesting, measured-elsewhere spans, what is kept, stored form."""

from __future__ import annotations

import asyncio
import time

import pytest

from appliance.operations import trace_record
from appliance.telemetry.tracing import (
    ActiveTrace,
    NullTrace,
    Tracer,
    current_trace,
    current_trace_id,
    new_trace_id,
    span,
)


def collecting() -> tuple[Tracer, list[ActiveTrace]]:
    out: list[ActiveTrace] = []
    return Tracer(sink=out.append), out


def test_outside_a_trace_everything_is_a_no_op() -> None:
    assert isinstance(current_trace(), NullTrace)
    assert current_trace_id() is None
    with span("sandbox.run", language="python") as s:
        s.set(status="ok")
    current_trace().tag(session_id="ses_1")
    current_trace().add_span("prefill", start=time.perf_counter(), duration_s=0.1)


def test_spans_nest_and_the_trace_is_stored_once_when_it_ends() -> None:
    tracer, stored = collecting()
    with tracer.trace("turn", "agent turn", session_id="ses_1", agent="coder") as t:
        assert current_trace() is t and current_trace_id() == t.id
        with span("tool.call", tool="python") as outer, span("sandbox.run") as inner:
            inner.set(status="ok", exit_code=0)
        with span("decode"):
            pass
    assert current_trace_id() is None
    assert stored == [t] and t.finished
    names = {s.name: s for s in t.spans}
    assert names["sandbox.run"].parent == outer.id
    assert names["tool.call"].parent is None and names["decode"].parent is None
    assert names["sandbox.run"].attrs == {"status": "ok", "exit_code": 0}
    assert all(s.end is not None and s.end >= s.start for s in t.spans)
    assert (t.kind, t.session_id, t.agent, t.status) == ("turn", "ses_1", "coder", "ok")
    tracer.finish(t)
    assert stored == [t], "finishing twice stores once"


def test_an_exception_marks_the_span_and_the_trace() -> None:
    tracer, stored = collecting()
    with pytest.raises(ValueError), tracer.trace("run", "one-shot") as t, span("sandbox.run"):
        raise ValueError("boom")
    assert t.status == "error" and "boom" in t.attrs["error"]
    assert "ValueError: boom" in t.spans[0].attrs["error"]
    assert stored == [t]


def test_quiet_reads_are_kept_only_when_they_did_traced_work() -> None:
    tracer, stored = collecting()
    quiet = tracer.begin("request", "GET /api/status", keep=False)
    tracer.finish(quiet)
    busy = tracer.begin("request", "GET /api/sessions", keep=False)
    busy.add_span("kv.restore", start=busy.t0, duration_s=0.01)
    tracer.finish(busy)
    assert stored == [busy]


def test_spans_added_after_the_trace_ended_are_dropped_and_open_ones_closed() -> None:
    tracer, _ = collecting()
    t = tracer.begin("request", "POST /v1/chat/completions")
    cm = t.span("decode")
    open_span = cm.__enter__()
    tracer.finish(t)
    assert open_span.end is not None and open_span.attrs["unfinished"] is True
    t.add_span("late", start=t.t0, duration_s=1.0)
    assert [s.name for s in t.spans] == ["decode"]


async def test_tasks_started_in_a_request_inherit_its_trace() -> None:
    tracer, stored = collecting()
    t = tracer.begin("request", "POST /api/sessions/x/messages")
    token = tracer.activate(t)
    try:

        async def tool() -> None:
            with span("tool.call", tool="search"):
                await asyncio.sleep(0)

        await asyncio.gather(asyncio.create_task(tool()), asyncio.create_task(tool()))
    finally:
        tracer.deactivate(token)
    tracer.finish(t)
    assert [s.name for s in stored[0].spans] == ["tool.call", "tool.call"]
    assert {s.id for s in t.spans} == {"s1", "s2"}


def test_stored_form_has_millisecond_offsets_and_plain_attrs() -> None:
    tracer, _ = collecting()
    t = tracer.begin("chat", "POST /v1/chat/completions", model="tiny")
    q = t.add_span("queue", start=t.t0 + 0.010, duration_s=0.020, model="tiny")
    t.add_span("model.wake", start=t.t0 + 0.010, duration_s=0.015, parent=q, path=object())
    tracer.finish(t)
    rec = trace_record(t)
    assert rec.id == t.id and rec.model == "tiny" and rec.kind == "chat"
    queue, wake = rec.spans
    assert queue.start_ms == pytest.approx(10.0, abs=0.01)
    assert queue.duration_ms == pytest.approx(20.0, abs=0.01)
    assert wake.parent == queue.id
    assert isinstance(wake.attrs["path"], str), "attributes that JSON cannot hold become text"
    assert rec.duration_ms >= 0


def test_trace_ids_are_unique_and_sortable() -> None:
    ids = [new_trace_id() for _ in range(200)]
    assert len(set(ids)) == 200
    assert all(i.startswith("trc_") and len(i) == 24 for i in ids)
    assert sorted(i[:16] for i in ids) == [i[:16] for i in ids]
