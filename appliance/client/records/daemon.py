"""The daemon itself: health, status, models, GPU samples, events and the connection state."""

from __future__ import annotations

from typing import Any

import msgspec

from appliance.client.records.parse import as_dict, as_int, as_list, as_num, as_opt_str, as_str


class Health(msgspec.Struct, frozen=True):
    status: str
    version: str

    @classmethod
    def from_json(cls, d: Any) -> Health:
        d = as_dict(d)
        return cls(status=as_str(d.get("status"), "?"), version=as_str(d.get("version"), "?"))


class ModelInfo(msgspec.Struct, frozen=True):
    """One model profile and where it is in its lifecycle (unloaded, loading, ready, busy, ...)."""

    id: str
    kind: str = "chat"
    state: str = "unloaded"
    pinned: bool = False
    memory_bytes: int = 0
    memory_estimate_bytes: int = 0
    idle_deadline: float | None = None
    """Wall-clock time at which an idle model will be unloaded (None: not counting down)."""
    last_error: str | None = None
    active: int = 0
    waiting: int = 0
    context_size: int = 0
    source: str = ""
    load_count: int = 0
    last_load_ms: float | None = None
    counters: dict[str, int] = msgspec.field(default_factory=dict)
    fetched: bool | None = None
    """Whether the model file is on the daemon's host already (None: not reported)."""
    size_bytes: int | None = None
    """The model file's size on disk (None: not on disk yet, or not reported)."""
    origin: str = ""
    """Where it came from: local, url, hf, pypi, ollama, lmstudio, hf-cache."""
    sha256: str | None = None

    @classmethod
    def from_json(cls, d: Any) -> ModelInfo:
        d = as_dict(d)
        return cls(
            id=as_str(d.get("id"), "?"),
            kind=as_str(d.get("kind"), "chat"),
            state=as_str(d.get("state"), "unloaded"),
            pinned=bool(d.get("pinned")),
            memory_bytes=as_int(d.get("memory_bytes")),
            memory_estimate_bytes=as_int(d.get("memory_estimate_bytes")),
            idle_deadline=as_num(d.get("idle_deadline")),
            last_error=as_opt_str(d.get("last_error")),
            active=as_int(d.get("active")),
            waiting=as_int(d.get("waiting")),
            context_size=as_int(d.get("context_size")),
            source=as_str(d.get("source")),
            load_count=as_int(d.get("load_count")),
            last_load_ms=as_num(d.get("last_load_ms")),
            counters={k: as_int(v) for k, v in as_dict(d.get("counters")).items()},
            fetched=d["fetched"] if isinstance(d.get("fetched"), bool) else None,
            size_bytes=as_int(d["size_bytes"]) if d.get("size_bytes") is not None else None,
            origin=as_str(d.get("origin")),
            sha256=as_opt_str(d.get("sha256")),
        )

    @property
    def resident(self) -> bool:
        return self.state in ("ready", "busy")


class DaemonStatus(msgspec.Struct, frozen=True):
    """`GET /api/status`: the daemon, its models and the figures of its scheduler."""

    version: str
    models: list[ModelInfo]
    queue_depth: int = 0
    active_requests: int = 0
    memory_kind: str = ""
    memory_used_bytes: int = 0
    memory_budget_bytes: int = 0
    sandboxes: int | None = None
    """Live sandboxes, when the daemon reports them."""
    sessions: int | None = None
    """Active sessions (their KV cache hot in a worker), when the daemon reports them."""

    @classmethod
    def from_json(cls, d: Any) -> DaemonStatus:
        d = as_dict(d)
        sched = as_dict(d.get("scheduler"))
        sandboxes = d.get("sandboxes")
        sessions = d.get("sessions")
        return cls(
            version=as_str(d.get("version"), "?"),
            models=[ModelInfo.from_json(m) for m in as_list(d.get("models"))],
            queue_depth=as_int(sched.get("queue_depth")),
            active_requests=as_int(sched.get("active_requests")),
            memory_kind=as_str(sched.get("memory_kind")),
            memory_used_bytes=as_int(sched.get("memory_used_bytes")),
            memory_budget_bytes=as_int(sched.get("memory_budget_bytes")),
            sandboxes=_count(sandboxes, "sandboxes"),
            sessions=_count(sessions, "hot_sessions", "active"),
        )


def _count(value: Any, *keys: str) -> int | None:
    """A count reported as a number, a list, or a field (the first of `keys` present) of a dict."""
    if isinstance(value, dict):
        value = next((value[k] for k in keys if k in value), None)
    if isinstance(value, list):
        return len(value)
    return as_int(value) if as_num(value) is not None else None


class GpuDevice(msgspec.Struct, frozen=True):
    index: int
    name: str
    utilization_percent: float | None = None
    memory_used_bytes: int | None = None
    memory_total_bytes: int | None = None
    power_watts: float | None = None
    power_limit_watts: float | None = None
    temperature_c: float | None = None

    @classmethod
    def from_json(cls, d: Any) -> GpuDevice:
        d = as_dict(d)
        used, total = as_num(d.get("memory_used_bytes")), as_num(d.get("memory_total_bytes"))
        return cls(
            index=as_int(d.get("index")),
            name=as_str(d.get("name"), "GPU"),
            utilization_percent=as_num(d.get("utilization_percent")),
            memory_used_bytes=int(used) if used is not None else None,
            memory_total_bytes=int(total) if total is not None else None,
            power_watts=as_num(d.get("power_watts")),
            power_limit_watts=as_num(d.get("power_limit_watts")),
            temperature_c=as_num(d.get("temperature_c")),
        )


class HostSample(msgspec.Struct, frozen=True):
    """CPU and RAM of the daemon's host, shown in place of GPU gauges on a box without a GPU."""

    cpu_percent: float | None = None
    memory_used_bytes: int | None = None
    memory_total_bytes: int | None = None


class GpuReport(msgspec.Struct, frozen=True):
    """`GET /api/gpu`: the devices, the host's CPU/RAM, and why there is no GPU if there is none."""

    gpus: list[GpuDevice]
    host: HostSample | None = None
    reason: str | None = None

    @classmethod
    def from_json(cls, d: Any) -> GpuReport:
        if isinstance(d, list):
            d = {"gpus": d}
        d = as_dict(d)
        gpus = [GpuDevice.from_json(g) for g in as_list(d.get("gpus", d.get("devices")))]
        host_d = as_dict(d.get("host"))
        mem = as_dict(host_d.get("memory"))
        host = None
        if host_d:
            used = host_d.get("memory_used_bytes", mem.get("used_bytes"))
            total = host_d.get("memory_total_bytes", mem.get("total_bytes"))
            host = HostSample(
                cpu_percent=as_num(host_d.get("cpu_percent")),
                memory_used_bytes=as_int(used) if as_num(used) is not None else None,
                memory_total_bytes=as_int(total) if as_num(total) is not None else None,
            )
        return cls(gpus=gpus, host=host, reason=as_opt_str(d.get("reason") or d.get("message")))


class PullInfo(msgspec.Struct, frozen=True):
    """One model pull (`GET /api/models/pulls`): where it stands and how fast it goes."""

    id: str
    model: str
    source: str = ""
    state: str = "downloading"
    """downloading, verifying, done, failed or cancelled."""
    bytes: int = 0
    total: int | None = None
    rate: float = 0.0
    error: str | None = None

    @property
    def finished(self) -> bool:
        return self.state in ("done", "failed", "cancelled")

    @classmethod
    def from_json(cls, d: Any) -> PullInfo:
        d = as_dict(d)
        total = as_num(d.get("total"))
        return cls(
            id=as_str(d.get("id"), "?"),
            model=as_str(d.get("model"), "?"),
            source=as_str(d.get("source")),
            state=as_str(d.get("state"), "downloading"),
            bytes=as_int(d.get("bytes")),
            total=int(total) if total is not None else None,
            rate=as_num(d.get("rate")) or 0.0,
            error=as_opt_str(d.get("error")),
        )


class DaemonEvent(msgspec.Struct, frozen=True):
    """One item of `GET /api/events`: `seq`, `type` (model.state, sandbox.created, ...), `ts`."""

    seq: int
    type: str
    ts: float
    data: dict[str, Any] = msgspec.field(default_factory=dict)

    @classmethod
    def from_json(cls, d: Any) -> DaemonEvent:
        d = as_dict(d)
        rest = {k: v for k, v in d.items() if k not in ("seq", "type", "ts")}
        return cls(
            seq=as_int(d.get("seq")),
            type=as_str(d.get("type"), "?"),
            ts=as_num(d.get("ts")) or 0.0,
            data=rest,
        )


class ConnectionState(msgspec.Struct, frozen=True):
    """How the console currently stands with the daemon; drives the banner."""

    kind: str
    """"connected", "unreachable" or "unauthorized" ("connecting" before the first answer)."""
    url: str
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.kind == "connected"


class StreamStatus(msgspec.Struct, frozen=True):
    """A change in the events stream itself, given between events by `ApplianceClient.events`."""

    state: str
    """"live" (connected, events flow), "down" (will retry in `retry_in_s`) or "unsupported"
    (the daemon has no /api/events; callers fall back to polling)."""
    detail: str = ""
    retry_in_s: float | None = None
