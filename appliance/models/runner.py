"""What the scheduler keeps per model, and the parts it is given: clock, worker, spawner.

`Runner` is one model's live state (lifecycle state, worker, reference counts, idle deadline,
memory figures); `ModelStatus` is the snapshot of it the API shows. The protocols name exactly what
the scheduler needs of a clock, a worker process and a spawner, so tests can hand it fakes.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from appliance.models.profile import ModelProfile
from appliance.models.worker import protocol as p

if TYPE_CHECKING:
    from appliance.models.worker.process import RequestStream


class Clock(Protocol):
    def monotonic(self) -> float: ...

    def time(self) -> float: ...


class SystemClock:
    def monotonic(self) -> float:
        return time.monotonic()

    def time(self) -> float:
        return time.time()


class Worker(Protocol):
    """What the daemon needs of a model worker: the scheduler (lifecycle, spares, recycling) and
    the services that talk to it through a lease (`request`, `call`). In production it is
    appliance.models.worker.process.WorkerProcess; tests hand the scheduler fakes."""

    pid: int
    model_id: str | None
    on_exit: Callable[[Worker, str], None] | None
    """Called once when the process ends (not after an unload or close asked for)."""
    recycled: int
    """How many models this process has loaded and dropped again."""

    @property
    def alive(self) -> bool: ...

    def sees(self, path: str) -> bool:
        """Whether the worker can open `path` (a jailed one sees the model directories only)."""
        ...

    async def load(self, spec: p.Load, timeout: float) -> p.Loaded: ...

    async def unload(self, timeout: float = ...) -> int:
        """Drop the model and become a spare; the process's resident bytes after."""
        ...

    async def close(self, grace: float = ...) -> None: ...

    async def send(self, cmd: p.Command) -> None: ...

    async def request(self, make: Callable[[int], p.Command]) -> RequestStream:
        """Start a request (its id given to `make`); its events come on the stream."""
        ...

    async def call(self, make: Callable[[int], p.Command], kind: type[p.R]) -> p.R:
        """One command and its result, a `kind`."""
        ...


class Spawner(Protocol):
    async def spawn(self) -> Worker: ...


@dataclass
class Runner:
    profile: ModelProfile
    slots: asyncio.Semaphore
    state: str = "unloaded"  # unloaded | loading | ready | busy | unloading | failed
    worker: Worker | None = None
    active: int = 0
    waiting: int = 0
    pinned: bool = False
    keep_alive: float | None = None
    expires_at: float | None = None  # monotonic
    last_used: float | None = None  # wall clock
    last_used_mono: float = 0.0
    load_count: int = 0
    last_load_ms: float | None = None
    last_error: str | None = None
    memory_estimate: int = 0
    memory_measured: int = 0
    load_task: asyncio.Task[None] | None = None
    model_path: str | None = None
    loaded: p.Loaded | None = None
    unload_when_idle: bool = False
    reserved: bool = False
    """Admitted and loading: its estimate is held in the budget before it has a worker."""
    evicted: bool = False
    """Its last unload was an eviction (the next load is a swap)."""
    swap_loads: collections.deque[float] = field(default_factory=collections.deque)
    """Monotonic times of recent loads that followed an eviction (thrash detection)."""
    thrash_reported: float | None = None
    load_ms_by_tier: dict[str, float] = field(default_factory=dict)
    """The last load's milliseconds by where the file was: warm (page cache) or cold (disk)."""
    counters: dict[str, int] = field(
        default_factory=lambda: {
            "requests": 0,
            "evictions": 0,
            "crashes": 0,
            "swaps": 0,
            "thrash": 0,
        }
    )

    @property
    def resident(self) -> bool:
        return (self.worker is not None or self.reserved) and self.state in (
            "loading",
            "ready",
            "busy",
            "unloading",
        )

    @property
    def memory_bytes(self) -> int:
        return self.memory_measured or (self.memory_estimate if self.resident else 0)

    @property
    def idle(self) -> bool:
        return self.state == "ready" and self.active == 0 and self.waiting == 0


@dataclass
class ModelStatus:
    id: str
    kind: str
    state: str
    pinned: bool
    memory_bytes: int
    memory_estimate_bytes: int
    last_used: float | None
    idle_deadline: float | None
    idle_ttl_s: float
    load_count: int
    last_load_ms: float | None
    last_error: str | None
    active: int
    waiting: int
    parallel: int
    context_size: int
    worker_pid: int | None
    source: str
    counters: dict[str, int]
    swap_tier: str = "cold"
    """What a request costs now: hot (loaded: no load), warm (file in the page cache: a load
    from RAM), cold (a load from disk, or a fetch first when the file is not local)."""
    swap_cost_ms: dict[str, float | None] = field(default_factory=dict)
    """Measured cost of each tier for this model: hot 0, warm and cold the last load from each
    (None until one happened); `spawn` is added when no spare worker is ready (a process start)."""

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)
