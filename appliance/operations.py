"""Operations: the daemon's view of itself, for `/metrics`, `/api/gpu`, events, traces and usage.

`Telemetry` (appliance.telemetry) records what happens; this service connects it to the rest of
the box: it writes finished traces and usage facts to the store off the event loop (in batches,
with the retention limits of `[telemetry]`), reads them back for the API, fills the state gauges
(models, queues, sessions, parked KV, GPU and host) just before each scrape, and turns the event
bus into a stream for one client. Reads that hit NVML, psutil or SQLite run in threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

from appliance.config import Config
from appliance.errors import InvalidRequest
from appliance.models.scheduler import ModelScheduler
from appliance.store import Store
from appliance.store.traces import Span, Trace
from appliance.store.usage import UsageGroup
from appliance.telemetry.host import host_status, process_status
from appliance.telemetry.nvml import GpuStatus, Nvml
from appliance.telemetry.recorder import Telemetry
from appliance.telemetry.tracing import ActiveTrace

log = logging.getLogger("appliance.operations")

TRACE_FLUSH_S = 1.0
MAX_PENDING_TRACES = 5_000
PRUNE_EVERY_S = 300.0
HEARTBEAT_S = 15.0


def _plain(value: Any) -> Any:
    """A JSON-safe copy of a span or trace attribute."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set):
        return [_plain(v) for v in value]
    return str(value)


def trace_record(t: ActiveTrace) -> Trace:
    """The stored form of a finished trace: span times in ms after the trace's start."""
    return Trace(
        id=t.id,
        kind=t.kind,
        name=t.name,
        started=t.started,
        duration_ms=round(t.duration_s * 1000.0, 3),
        status=t.status,
        attrs=_plain(t.attrs),
        model=t.model,
        session_id=t.session_id,
        agent=t.agent,
        spans=[
            Span(
                id=s.id,
                name=s.name,
                parent=s.parent,
                start_ms=round((s.start - t.t0) * 1000.0, 3),
                duration_ms=round(
                    ((s.end if s.end is not None else s.start) - s.start) * 1000.0, 3
                ),
                attrs=_plain(s.attrs),
            )
            for s in t.spans
        ],
    )


def parse_since(value: str | None, now: float | None = None) -> float | None:
    """`since` as unix seconds, an ISO 8601 time, or an age like `90s`, `15m`, `24h`, `7d`."""
    if value is None or value == "":
        return None
    now = time.time() if now is None else now
    v = value.strip()
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
    if v[-1:] in units:
        try:
            return now - float(v[:-1]) * units[v[-1]]
        except ValueError:
            pass
    try:
        return float(v)
    except ValueError:
        pass
    try:
        dt = datetime.fromisoformat(v.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidRequest(
            f"since={value!r} is not a time: give unix seconds, an ISO 8601 time "
            "(2025-01-31T12:00:00Z) or an age such as 15m, 24h or 7d",
            param="since",
        ) from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()


class Operations:
    def __init__(
        self, config: Config, *, store: Store, scheduler: ModelScheduler, telemetry: Telemetry
    ) -> None:
        self.config = config.telemetry
        self.store = store
        self.scheduler = scheduler
        self.telemetry = telemetry
        self.nvml: Nvml | None = telemetry.nvml
        self._traces: list[ActiveTrace] = []
        self._trace_lock = asyncio.Lock()
        self._usage_lock = asyncio.Lock()
        self._scrape_lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._last_prune = time.monotonic()
        self._stored_since_prune = 0
        telemetry.tracer.sink = self.queue_trace

    # --- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        self.telemetry.events.bind_loop(asyncio.get_running_loop())
        if self.nvml is not None:  # the first energy reading is the baseline
            self.telemetry.usage.energy.delta(await asyncio.to_thread(self.nvml.energy_joules))
        self._task = asyncio.create_task(self._writer_loop())

    async def stop(self) -> None:
        """Write what is still pending (call before the store closes)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task
            self._task = None
        for flush in (self.flush_traces, self.flush_usage):
            try:
                await flush()
            except Exception:
                log.exception("could not write the last telemetry at stop")

    async def _writer_loop(self) -> None:
        next_usage = time.monotonic() + self.config.usage_interval_s
        while True:
            await asyncio.sleep(TRACE_FLUSH_S)
            try:
                await self.flush_traces()
                if time.monotonic() >= next_usage:
                    next_usage = time.monotonic() + self.config.usage_interval_s
                    await self.flush_usage()
                if time.monotonic() - self._last_prune >= PRUNE_EVERY_S:
                    await self.prune()
            except Exception:
                log.exception("writing telemetry failed; retrying")

    # --- traces ------------------------------------------------------------------------------

    def queue_trace(self, trace: ActiveTrace) -> None:
        """The tracer's sink: keep the trace until the next write (drop the oldest if behind)."""
        self._traces.append(trace)
        if len(self._traces) > MAX_PENDING_TRACES:
            del self._traces[0]
            self.telemetry.metrics.traces_dropped.inc()

    async def flush_traces(self) -> None:
        async with self._trace_lock:
            batch, self._traces = self._traces, []
            if batch:
                records = [trace_record(t) for t in batch]
                await self.store.run(self._insert_traces, records)
                self._stored_since_prune += len(records)
            # prune as the traces come in (a tenth of the limit at a time), not only on the timer
            if self._stored_since_prune >= max(10, self.config.trace_retention // 10):
                await self.prune()

    def _insert_traces(self, records: list[Trace]) -> None:
        for r in records:
            try:
                self.store.traces.insert(r)
            except InvalidRequest as exc:
                log.warning("trace %s not stored: %s", r.id, exc.message)

    async def prune(self) -> None:
        """Apply the retention limits of [telemetry] to traces and usage."""
        self._last_prune = time.monotonic()
        self._stored_since_prune = 0
        now = time.time()
        cfg = self.config
        older = now - cfg.trace_max_age_days * 86400 if cfg.trace_max_age_days > 0 else None
        await self.store.run(self.store.traces.prune, keep=cfg.trace_retention, older_than=older)
        if cfg.usage_retention_days > 0:
            await self.store.run(
                self.store.usage.prune, older_than=now - cfg.usage_retention_days * 86400
            )

    async def traces(
        self, *, limit: int = 50, since: str | None = None, **filters: Any
    ) -> list[Trace]:
        await self.flush_traces()
        return await self.store.run(
            self.store.traces.recent, limit=limit, since=parse_since(since), **filters
        )

    async def trace(self, trace_id: str) -> Trace:
        await self.flush_traces()
        return await self.store.run(self.store.traces.get, trace_id)

    # --- usage -------------------------------------------------------------------------------

    async def flush_usage(self) -> None:
        async with self._usage_lock:
            reading = await asyncio.to_thread(self.nvml.energy_joules) if self.nvml else None
            facts = self.telemetry.usage.collect(reading)
            if self.telemetry.usage.dropped:
                self.telemetry.metrics.traces_dropped.inc(self.telemetry.usage.dropped)
                self.telemetry.usage.dropped = 0
            if facts:
                await self.store.run(self.store.usage.record, *facts)

    async def usage(self, by: str = "model", since: str | None = None) -> dict[str, Any]:
        if by not in ("model", "agent", "session"):
            raise InvalidRequest(f"by must be model, agent or session, not {by!r}", param="by")
        group: UsageGroup = by  # type: ignore[assignment]
        start = parse_since(since)
        await self.flush_usage()
        rows = await self.store.run(self.store.usage.aggregate, group, since=start)
        total = await self.store.run(self.store.usage.total, since=start)
        return {
            "by": by,
            "since": start,
            "energy_measured": self.nvml is not None,
            "rows": rows,
            "total": total,
        }

    # --- GPU and host ------------------------------------------------------------------------

    async def gpu(self) -> dict[str, Any]:
        """Per-GPU figures (or why there are none), the host's CPU and RAM, and each worker."""
        workers = [(m.id, m.worker_pid) for m in self.scheduler.snapshot() if m.worker_pid]
        host = await asyncio.to_thread(host_status)
        out: dict[str, Any] = {"nvml": self.nvml is not None, "host": host.to_dict()}
        gpus: list[GpuStatus] = []
        if self.nvml is not None:
            gpus = await asyncio.to_thread(self.nvml.gpus)
            out["driver_version"] = await asyncio.to_thread(self.nvml.driver_version)
            out["message"] = f"{len(gpus)} NVIDIA GPU(s) through NVML"
        else:
            out["message"] = (await asyncio.to_thread(Nvml.why_unavailable)) + (
                "; models run on the CPU. The figures below are the host's CPU and RAM (psutil)."
            )
        out["gpus"] = [g.to_dict() for g in gpus]
        gpu_mem: dict[int, int] = {}
        for g in gpus:
            for p in g.processes:
                gpu_mem[p.pid] = gpu_mem.get(p.pid, 0) + p.memory_bytes
        rows = []
        for model, pid in workers:
            ps = await asyncio.to_thread(process_status, pid)
            rows.append(
                {
                    "model": model,
                    "pid": pid,
                    "gpu_memory_bytes": gpu_mem.get(pid),
                    "rss_bytes": ps.rss_bytes if ps else None,
                    "cpu_seconds": ps.cpu_seconds if ps else None,
                }
            )
        out["workers"] = rows
        return out

    # --- metrics -----------------------------------------------------------------------------

    async def scrape(self) -> bytes:
        """Set the state gauges from live state, then render every metric."""
        async with self._scrape_lock:
            m = self.telemetry.metrics
            models = self.scheduler.snapshot()
            for gauge in (m.model_memory, m.model_queue_depth, m.model_active):
                gauge.clear()
            resident = [s for s in models if s.worker_pid is not None]
            m.models_resident.set(len(resident))
            for s in resident:
                m.model_memory.labels(s.id).set(s.memory_bytes)
            for s in models:
                if s.waiting or s.active or s.worker_pid is not None:
                    m.model_queue_depth.labels(s.id).set(s.waiting)
                    m.model_active.labels(s.id).set(s.active)
            m.memory_budget.set(self.scheduler.stats()["memory_budget_bytes"])
            m.run_scrape_hooks()
            counts, parked = await self.store.run(self._session_counts)
            m.sessions.clear()
            for status in ("created", "active", "parked"):
                m.sessions.labels(status).set(counts.get(status, 0))
            m.kv_parked_bytes.set(parked)
            await asyncio.to_thread(self._hardware_gauges)
            return m.render()

    def _session_counts(self) -> tuple[dict[str, int], int]:
        con = self.store.db.connection()
        counts = {
            str(s): int(n)
            for s, n in con.execute("SELECT status, count(*) FROM sessions GROUP BY status")
        }
        return counts, int(self.store.kv.total_bytes())

    def _hardware_gauges(self) -> None:
        m = self.telemetry.metrics
        host = host_status()
        m.host_cpu.set(host.cpu_percent)
        m.host_memory_used.set(host.memory_used_bytes)
        m.host_memory_total.set(host.memory_total_bytes)
        gpus = self.nvml.gpus() if self.nvml is not None else []
        m.gpus.set(len(gpus))
        for gauge in (m.gpu_utilization, m.gpu_throttled):
            gauge.clear()
        for g in gpus:
            idx = str(g.index)
            for gauge, value in (
                (m.gpu_memory_used, g.memory_used_bytes),
                (m.gpu_memory_total, g.memory_total_bytes),
                (m.gpu_power, g.power_watts),
                (m.gpu_power_limit, g.power_limit_watts),
                (m.gpu_temperature, g.temperature_c),
                (m.gpu_energy, g.energy_joules),
            ):
                if value is not None:
                    gauge.labels(idx).set(value)
            if g.utilization_percent is not None:
                m.gpu_utilization.labels(idx, g.name).set(g.utilization_percent)
            for reason in g.throttle_reasons:
                m.gpu_throttled.labels(idx, reason).set(1)

    # --- live events -------------------------------------------------------------------------

    async def event_stream(
        self,
        *,
        since: int | None = None,
        types: list[str] | None = None,
        heartbeat_s: float = HEARTBEAT_S,
    ) -> AsyncIterator[dict[str, Any] | None]:
        """Events for one client: those after `since` that are still kept, then live ones, whose
        type starts with one of `types` (all when empty). None is a heartbeat (no event for a
        while). Ends when the daemon stops."""
        bus = self.telemetry.events
        wanted = tuple(t for t in (types or []) if t)

        def match(ev: dict[str, Any]) -> bool:
            return not wanted or str(ev.get("type", "")).startswith(wanted)

        async with bus.subscribe() as sub:
            last = 0
            if since is not None:
                for kept in bus.since(since):
                    last = kept["seq"]
                    if match(kept):
                        yield kept
            dropped = 0
            while True:
                try:
                    ev = await asyncio.wait_for(sub.get(), heartbeat_s)
                except TimeoutError:
                    yield None
                    continue
                if ev is None:
                    return
                if sub.dropped > dropped:
                    yield {
                        "type": "events.dropped",
                        "count": sub.dropped - dropped,
                        "seq": ev["seq"] - 1,
                        "ts": time.time(),
                    }
                    dropped = sub.dropped
                if ev["seq"] > last and match(ev):
                    yield ev
