"""Telemetry: model lifecycle events become metrics and resident time; generations and sandbox
runs become metrics, spans and usage; the event bus replays, isolates listeners and closes."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import msgspec
import pytest
from prometheus_client.parser import text_string_to_metric_families

from appliance.models.worker import protocol as p
from appliance.telemetry.events import EventBus
from appliance.telemetry.metrics import Metrics
from appliance.telemetry.recorder import Telemetry
from appliance.telemetry.tracing import ActiveTrace, Tracer


def value(t: Telemetry, name: str, **labels: str) -> float:
    v = t.metrics.registry.get_sample_value(name, labels)
    return 0.0 if v is None else v


def test_each_appliance_has_its_own_registry() -> None:
    a, b = Metrics(), Metrics()
    a.model_loads.labels("m").inc()
    assert a.registry.get_sample_value("appliance_model_loads_total", {"model": "m"}) == 1
    assert b.registry.get_sample_value("appliance_model_loads_total", {"model": "m"}) is None
    names = {f.name for f in text_string_to_metric_families(a.render().decode())}
    assert {
        "appliance_http_requests",
        "appliance_time_to_first_token_seconds",
        "appliance_sandbox_runs",
        "appliance_gpu_power_watts",
    } <= names


def test_model_lifecycle_events_move_the_model_metrics() -> None:
    bus = EventBus()
    t = Telemetry(bus)
    bus.publish("model.state", model="m", state="loading")
    bus.publish("model.state", model="m", state="ready", load_ms=1500.0, memory_bytes=10)
    bus.publish("model.evicted", model="m", for_model="big")
    bus.publish("model.state", model="m", state="unloading", reason="evicted for big")
    bus.publish("model.state", model="m", state="unloaded", reason="evicted for big")
    bus.publish("model.state", model="m", state="loading")
    bus.publish("model.state", model="m", state="failed", error="boom")
    assert value(t, "appliance_model_loads_total", model="m") == 1
    assert value(t, "appliance_model_evictions_total", model="m") == 1
    assert value(t, "appliance_model_unloads_total", model="m", reason="evicted") == 1
    assert value(t, "appliance_model_failures_total", model="m") == 1
    assert value(t, "appliance_model_wakeup_seconds_sum", model="m") == 1.5
    assert value(t, "appliance_events_total", type="model.state") == 6
    assert t.usage.residency.models == [], "unloaded and failed models are not resident"


@dataclass
class FakeLease:
    queue_ms: float
    load_ms: float | None


@dataclass
class FakeGeneration:
    model: str
    kind: str
    t0: float
    first_token_ms: float | None
    lease: FakeLease


RESULT = p.GenerateResult(
    text="",
    finish_reason="stop",
    usage=p.Usage(prompt_tokens=12, completion_tokens=21, total_tokens=33, cached_tokens=4),
    timings=p.Timings(prefill_ms=40.0, decode_ms=400.0),
)


def test_a_generation_moves_metrics_adds_spans_and_usage_for_its_session() -> None:
    bus = EventBus()
    t = Telemetry(bus)
    stored: list[ActiveTrace] = []
    t.tracer = Tracer(sink=stored.append)
    with t.tracer.trace("request", "POST /api/sessions/s/messages") as trace:
        trace.tag(kind="turn", session_id="ses_1", agent="coder")
        gen = FakeGeneration("m", "chat", time.perf_counter(), 45.0, FakeLease(250.0, 200.0))
        t.generation_finished(gen, RESULT, "ok")
    assert value(t, "appliance_generations_total", model="m", kind="chat", outcome="ok") == 1
    assert value(t, "appliance_prompt_tokens_total", model="m") == 12
    assert value(t, "appliance_completion_tokens_total", model="m") == 21
    assert value(t, "appliance_queue_wait_seconds_sum", model="m") == 0.25
    assert value(t, "appliance_time_to_first_token_seconds_sum", model="m") == 0.295
    assert (
        value(t, "appliance_tokens_per_second_sum", model="m") == 50.0
    )  # 20 tokens after the first in 0.4 s
    spans = {s.name: s for s in stored[0].spans}
    assert set(spans) == {"queue", "model.wake", "prefill", "decode"}
    assert spans["model.wake"].parent == spans["queue"].id
    assert spans["decode"].start - spans["prefill"].start == pytest.approx(0.04)
    assert stored[0].model == "m" and stored[0].kind == "turn"
    (fact,) = t.usage.collect()
    assert (fact.model, fact.session_id, fact.agent) == ("m", "ses_1", "coder")
    assert (fact.tokens_in, fact.tokens_out, fact.requests, fact.busy_seconds) == (12, 21, 1, 0.44)


def test_cancelled_and_failed_generations_are_counted_as_such() -> None:
    t = Telemetry(EventBus())
    gen = FakeGeneration("m", "completion", time.perf_counter(), None, FakeLease(1.0, None))
    t.generation_finished(gen, None, "cancelled")
    t.generation_finished(gen, msgspec.structs.replace(RESULT, finish_reason="cancelled"), "ok")
    t.generation_finished(gen, None, "error")
    assert (
        value(t, "appliance_generations_total", model="m", kind="completion", outcome="cancelled")
        == 2
    )
    assert (
        value(t, "appliance_generations_total", model="m", kind="completion", outcome="error") == 1
    )
    assert value(t, "appliance_time_to_first_token_seconds_count", model="m") == 0


def test_telemetry_never_breaks_the_reply() -> None:
    t = Telemetry(EventBus())
    t.generation_finished(object(), RESULT, "ok")  # type: ignore[arg-type]  # a wrong object is logged, not raised


def test_a_sandbox_run_is_a_metric_a_span_usage_and_an_event() -> None:
    bus = EventBus()
    t = Telemetry(bus)
    stored: list[ActiveTrace] = []
    t.tracer = Tracer(sink=stored.append)
    with t.tracer.trace("turn", "turn", session_id="ses_2"):
        t.sandbox_run("python", "timeout", duration_s=2.0, cpu_s=1.25, exit_code=None)
    assert value(t, "appliance_sandbox_runs_total", language="python", status="timeout") == 1
    assert value(t, "appliance_sandbox_run_duration_seconds_count", language="python") == 1
    assert value(t, "appliance_sandbox_cpu_seconds_total", language="python") == 1.25
    (s,) = stored[0].spans
    assert s.name == "sandbox.run" and s.attrs["status"] == "timeout"
    (fact,) = t.usage.collect()
    assert fact.session_id == "ses_2" and fact.sandbox_cpu_s == 1.25
    (ev,) = [e for e in bus.recent() if e["type"] == "sandbox.run"]
    assert ev["language"] == "python" and ev["status"] == "timeout" and ev["session_id"] == "ses_2"


async def test_bus_replays_after_a_seq_and_closing_ends_subscriptions() -> None:
    bus = EventBus(history=5)
    for i in range(8):
        bus.publish("tick", i=i)
    assert [e["i"] for e in bus.since(5)] == [5, 6, 7]
    assert [e["i"] for e in bus.since(0)] == [3, 4, 5, 6, 7], "only the kept history"
    async with bus.subscribe() as sub:
        waiter = asyncio.create_task(sub.get())
        await asyncio.sleep(0)
        bus.publish("tick", i=8)
        got = await waiter
        assert got is not None and got["i"] == 8
        bus.close()
        assert await sub.get() is None
        assert await sub.get() is None
    async with bus.subscribe() as late:
        assert await late.get() is None, "subscribing to a closed bus ends at once"


def test_a_failing_listener_does_not_reach_the_publisher() -> None:
    bus = EventBus()
    seen: list[str] = []

    def bad(_: dict[str, Any]) -> None:
        raise RuntimeError("listener bug")

    bus.listen(bad)
    bus.listen(lambda e: seen.append(e["type"]))
    bus.publish("model.state", model="m", state="loading")
    assert seen == ["model.state"]


async def test_slow_subscriber_loses_oldest_events_not_the_publisher() -> None:
    bus = EventBus()
    async with bus.subscribe(maxsize=3) as sub:
        for i in range(10):
            bus.publish("tick", i=i)
        assert sub.dropped == 7
        got = [await sub.get() for _ in range(3)]
        assert [e["i"] for e in got if e] == [7, 8, 9]
