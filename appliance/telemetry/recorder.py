"""`Telemetry`: the one object the rest of the daemon calls to say what it did.

The Appliance owns one. It holds the metrics registry, the tracer, the usage meter, the event bus
and the NVML handle (None without a driver). The calls other parts make are few and plain:

    telemetry.generation_finished(gen, result, outcome)       # ChatService, per generation
    telemetry.embedding_finished(model, lease, result, t0)    # ChatService, per embedding call
    telemetry.sandbox_run("python", "ok", duration_s=0.4, cpu_s=0.3)   # sandbox service, per run
    telemetry.turn_finished("ok")                             # agent runtime, per turn
    telemetry.events.publish("sandbox.created", sandbox=sid)  # anything the dashboard should see

Each call moves the right metrics, adds spans to the current trace (see `tracing`), and adds a
usage fact tagged with the current trace's model, agent and session. Model lifecycle metrics
(loads, unloads, evictions, wake-up time, resident time) come from the scheduler's events, which
`Telemetry` listens to, so the scheduler needs no telemetry calls of its own.
"""

from __future__ import annotations

import logging
import re
import time
from typing import Any, Protocol

from appliance.telemetry.events import EventBus
from appliance.telemetry.metrics import Metrics
from appliance.telemetry.nvml import Nvml
from appliance.telemetry.tracing import ActiveTrace, NullTrace, Tracer, current_trace
from appliance.telemetry.usage import UsageMeter, UsageRecord

log = logging.getLogger("appliance.telemetry")


class LeaseTimes(Protocol):
    queue_ms: float
    load_ms: float | None


class GenerationTimes(Protocol):
    """What `generation_finished` reads of a ChatService Generation."""

    model: str
    kind: str
    t0: float
    first_token_ms: float | None

    @property
    def lease(self) -> LeaseTimes: ...


class TokenCounts(Protocol):
    """What telemetry reads of a generation's usage (models.worker.protocol.Usage)."""

    @property
    def prompt_tokens(self) -> int: ...

    @property
    def completion_tokens(self) -> int: ...

    @property
    def cached_tokens(self) -> int: ...


class StepTimes(Protocol):
    """What telemetry reads of a generation's timings (models.worker.protocol.Timings)."""

    @property
    def prefill_ms(self) -> float: ...

    @property
    def decode_ms(self) -> float: ...


class GenerationOutcome(Protocol):
    """What telemetry reads of a worker's generation result (protocol.GenerateResult). A
    Protocol, so a change of that struct that telemetry would not follow fails mypy instead
    of an exception swallowed below at run time."""

    @property
    def finish_reason(self) -> str: ...

    @property
    def usage(self) -> TokenCounts: ...

    @property
    def timings(self) -> StepTimes: ...


class EmbeddingCounts(Protocol):
    """What telemetry reads of an embedding result (protocol.EmbedResult)."""

    @property
    def prompt_tokens(self) -> int: ...


def _reason_word(reason: Any) -> str:
    """'evicted for llama' -> 'evicted', 'keep_alive 0' -> 'keep_alive': a bounded label."""
    m = re.match(r"[a-z_]+", str(reason or "unknown").lower())
    return m.group(0) if m else "unknown"


def _name_trace(trace: ActiveTrace | NullTrace, kind: str, model: str | None) -> None:
    """A plain HTTP request trace becomes a "chat", "embedding", "run"... trace; a trace that
    already says what it is (an agent "turn") keeps its kind, and its first model."""
    if trace.kind == "request":
        trace.tag(kind=kind)
    if model is not None and trace.model is None:
        trace.tag(model=model)


class Telemetry:
    def __init__(
        self, events: EventBus, *, nvml: Nvml | None = None, metrics: Metrics | None = None
    ) -> None:
        self.events = events
        self.nvml = nvml
        self.metrics = metrics or Metrics()
        self.tracer = Tracer()
        self.usage = UsageMeter()
        events.listen(self._on_event)

    # --- model runtime ---------------------------------------------------------------------

    def _queue_spans(
        self, trace: ActiveTrace | NullTrace, model: str, t_acquired: float, lease: LeaseTimes
    ) -> None:
        queue_s = lease.queue_ms / 1000.0
        q = trace.add_span("queue", start=t_acquired - queue_s, duration_s=queue_s, model=model)
        if lease.load_ms is not None:
            trace.add_span(
                "model.wake",
                start=t_acquired - queue_s,
                duration_s=lease.load_ms / 1000.0,
                parent=q,
                model=model,
            )

    def generation_finished(
        self, gen: GenerationTimes, result: GenerationOutcome | None, outcome: str
    ) -> None:
        """A chat or completion generation ended: ok (with the worker's result), error or
        cancelled (the client went away); `result` is None when the worker sent none."""
        try:
            self._generation(gen, result, outcome)
        except Exception:  # telemetry must never break a reply
            log.exception("recording a generation failed")

    def _generation(
        self, gen: GenerationTimes, result: GenerationOutcome | None, outcome: str
    ) -> None:
        m, model = self.metrics, gen.model
        if result is not None and result.finish_reason == "cancelled":
            outcome = "cancelled"
        tokens_in = result.usage.prompt_tokens if result is not None else 0
        tokens_out = result.usage.completion_tokens if result is not None else 0
        prefill_s = result.timings.prefill_ms / 1000.0 if result is not None else 0.0
        decode_s = result.timings.decode_ms / 1000.0 if result is not None else 0.0
        queue_s = gen.lease.queue_ms / 1000.0

        m.generations.labels(model, gen.kind, outcome).inc()
        m.queue_wait.labels(model).observe(queue_s)
        m.prompt_tokens.labels(model).inc(tokens_in)
        m.completion_tokens.labels(model).inc(tokens_out)
        if gen.first_token_ms is not None:
            m.time_to_first_token.labels(model).observe(queue_s + gen.first_token_ms / 1000.0)
        if tokens_out > 1 and decode_s > 0:
            m.tokens_per_second.labels(model).observe((tokens_out - 1) / decode_s)

        trace = current_trace()
        _name_trace(trace, gen.kind, model)
        self._queue_spans(trace, model, gen.t0, gen.lease)
        if result is not None:
            trace.add_span(
                "prefill",
                start=gen.t0,
                duration_s=prefill_s,
                model=model,
                tokens=tokens_in,
                cached_tokens=result.usage.cached_tokens,
            )
            trace.add_span(
                "decode",
                start=gen.t0 + prefill_s,
                duration_s=decode_s,
                model=model,
                tokens=tokens_out,
                finish_reason=result.finish_reason,
            )
        if outcome == "error":
            trace.fail("error")
        self.usage.add(
            UsageRecord(
                model=model,
                agent=trace.agent,
                session_id=trace.session_id,
                tokens_in=tokens_in,
                tokens_out=tokens_out,
                requests=1,
                busy_seconds=prefill_s + decode_s,
            )
        )

    def embedding_finished(
        self, model: str, lease: LeaseTimes, result: EmbeddingCounts, t0: float
    ) -> None:
        """An embedding request ended; `t0` is perf_counter when the worker got it."""
        try:
            busy_s = time.perf_counter() - t0
            tokens = result.prompt_tokens
            m = self.metrics
            m.generations.labels(model, "embedding", "ok").inc()
            m.queue_wait.labels(model).observe(lease.queue_ms / 1000.0)
            m.prompt_tokens.labels(model).inc(tokens)
            trace = current_trace()
            _name_trace(trace, "embedding", model)
            self._queue_spans(trace, model, t0, lease)
            trace.add_span("embed", start=t0, duration_s=busy_s, model=model, tokens=tokens)
            self.usage.add(
                UsageRecord(
                    model=model,
                    agent=trace.agent,
                    session_id=trace.session_id,
                    tokens_in=tokens,
                    requests=1,
                    busy_seconds=busy_s,
                )
            )
        except Exception:
            log.exception("recording an embedding failed")

    # --- sandboxes and agents ------------------------------------------------------------------

    def sandbox_run(
        self,
        language: str,
        status: str,
        *,
        duration_s: float,
        cpu_s: float = 0.0,
        session_id: str | None = None,
        agent: str | None = None,
        **attrs: Any,
    ) -> None:
        """A sandboxed run ended (status: ok, error, timeout, oom, killed). Records the metrics,
        a `sandbox.run` span ending now on the current trace, the CPU-seconds as usage, and a
        `sandbox.run` event."""
        m = self.metrics
        m.sandbox_runs.labels(language, status).inc()
        m.sandbox_duration.labels(language).observe(max(0.0, duration_s))
        if cpu_s > 0:
            m.sandbox_cpu.labels(language).inc(cpu_s)
        trace = current_trace()
        _name_trace(trace, "run", None)
        trace.add_span(
            "sandbox.run",
            start=time.perf_counter() - duration_s,
            duration_s=duration_s,
            language=language,
            status=status,
            **attrs,
        )
        self.usage.add(
            UsageRecord(
                agent=agent or trace.agent,
                session_id=session_id or trace.session_id,
                sandbox_cpu_s=max(0.0, cpu_s),
            )
        )
        self.events.publish(
            "sandbox.run",
            language=language,
            status=status,
            duration_ms=round(duration_s * 1000.0, 3),
            cpu_s=round(cpu_s, 4),
            session_id=session_id or trace.session_id,
            **attrs,
        )

    def turn_finished(self, outcome: str = "ok") -> None:
        """An agent turn ended (ok, error, cancelled)."""
        self.metrics.turns.labels(outcome).inc()

    # --- model lifecycle, from the scheduler's events -----------------------------------------

    def _on_event(self, event: dict[str, Any]) -> None:
        kind = event.get("type", "")
        self.metrics.events_published.labels(kind).inc()
        if kind == "model.evicted":
            self.metrics.model_evictions.labels(event["model"]).inc()
        elif kind == "model.thrashing":
            self.metrics.model_thrash.labels(event["model"]).inc()
        if kind != "model.state":
            return
        m, model, state = self.metrics, event["model"], event["state"]
        if state == "ready":
            m.model_loads.labels(model).inc()
            if event.get("swap"):
                m.model_swaps.labels(model).inc()
            if event.get("load_ms") is not None:
                m.model_wakeup.labels(model).observe(float(event["load_ms"]) / 1000.0)
            self.usage.residency.resident(model)
        elif state == "unloaded":
            m.model_unloads.labels(model, _reason_word(event.get("reason"))).inc()
            self.usage.residency.gone(model)
        elif state == "failed":
            m.model_load_failures.labels(model).inc()
            self.usage.residency.gone(model)
