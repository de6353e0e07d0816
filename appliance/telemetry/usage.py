"""Usage metering: what the work cost, gathered in memory and handed to the ledger in batches.

Three kinds of facts make up usage:
- per-request facts (tokens in and out, one request, busy seconds, sandbox CPU-seconds), added as
  each piece of work ends and merged per (model, agent, session) until the next flush, so the
  ledger grows by one row per key and flush, not per request;
- residency: seconds each model has been loaded (GPU-seconds "resident"), accrued from the model
  lifecycle events and cut at every flush;
- energy: the difference of NVML's energy counter between two flushes, shared among the models
  resident in that interval by their resident seconds (or kept with no model when none was).

The meter is pure bookkeeping with an injected clock; `Operations` calls `collect` on a timer and
writes what it returns to `store.usage`.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import msgspec

Key = tuple[str | None, str | None, str | None]
"""(model, agent, session_id)."""


class UsageAmounts(msgspec.Struct, kw_only=True):
    """The amounts usage is made of, as a record carries them and the ledger sums them."""

    tokens_in: int = 0
    tokens_out: int = 0
    requests: int = 0
    gpu_seconds: float = 0.0
    """Seconds a model was resident on the GPU (or in memory) on behalf of this work."""
    busy_seconds: float = 0.0
    """Seconds a model was computing for this work."""
    energy_j: float = 0.0
    sandbox_cpu_s: float = 0.0


AMOUNTS: tuple[str, ...] = UsageAmounts.__struct_fields__
"""The names of the amounts, in their declared order (the ledger's columns of the same names)."""


class UsageRecord(UsageAmounts, kw_only=True):
    """One amount of usage: what the meter gathers and the ledger (appliance.store.usage) stores.

    Declared here, at the floor, so telemetry and the store share it without telemetry knowing
    the store. `ts` is unix seconds; None means "now" to whoever adds the record.
    """

    ts: float | None = None
    model: str | None = None
    agent: str | None = None
    session_id: str | None = None

    @property
    def key(self) -> Key:
        return (self.model, self.agent, self.session_id)

    def merge(self, other: UsageRecord) -> None:
        """Add `other`'s amounts to this record (same key); the later timestamp wins."""
        for name in AMOUNTS:
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.ts = other.ts if other.ts is not None else self.ts


class ResidencyMeter:
    """Seconds each model has been resident, accrued between `drain`s."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._since: dict[str, float] = {}
        self._pending: dict[str, float] = {}

    def resident(self, model: str) -> None:
        self._since.setdefault(model, self.clock())

    def gone(self, model: str) -> None:
        start = self._since.pop(model, None)
        if start is not None:
            self._pending[model] = self._pending.get(model, 0.0) + max(0.0, self.clock() - start)

    @property
    def models(self) -> list[str]:
        return sorted(self._since)

    def drain(self) -> dict[str, float]:
        """Resident seconds per model since the last drain (models still loaded included)."""
        now = self.clock()
        out = dict(self._pending)
        self._pending.clear()
        for model, start in self._since.items():
            out[model] = out.get(model, 0.0) + max(0.0, now - start)
            self._since[model] = now
        return {m: s for m, s in out.items() if s > 0}


class EnergyMeter:
    """Joules between two readings of a cumulative energy counter."""

    def __init__(self) -> None:
        self._last: float | None = None

    def delta(self, reading: float | None) -> float:
        """The energy since the previous reading; 0 for the first one or after a counter reset."""
        if reading is None:
            return 0.0
        last, self._last = self._last, reading
        if last is None or reading < last:
            return 0.0
        return reading - last


def share_energy(joules: float, resident: dict[str, float]) -> dict[str | None, float]:
    """Split `joules` among models by their resident seconds; all to None when none was loaded."""
    if joules <= 0:
        return {}
    total = sum(resident.values())
    if total <= 0:
        return {None: joules}
    return {model: joules * seconds / total for model, seconds in resident.items()}


class UsageMeter:
    """Collects usage records between flushes (call it on one thread: the event loop)."""

    MAX_KEYS = 50_000
    """Distinct (model, agent, session) keys held before facts are dropped (and counted)."""

    def __init__(
        self, clock: Callable[[], float] = time.monotonic, wall: Callable[[], float] = time.time
    ) -> None:
        self.residency = ResidencyMeter(clock)
        self.energy = EnergyMeter()
        self.wall = wall
        self._facts: dict[Key, UsageRecord] = {}
        self.dropped = 0

    def add(self, fact: UsageRecord) -> None:
        if fact.ts is None:
            fact.ts = self.wall()
        held = self._facts.get(fact.key)
        if held is not None:
            held.merge(fact)
        elif len(self._facts) >= self.MAX_KEYS:
            self.dropped += 1
        else:
            self._facts[fact.key] = fact

    def collect(self, energy_reading: float | None = None) -> list[UsageRecord]:
        """Everything since the last collect: merged request facts, then residency, then energy."""
        now = self.wall()
        out = list(self._facts.values())
        self._facts.clear()
        resident = self.residency.drain()
        out += [UsageRecord(model=m, gpu_seconds=s, ts=now) for m, s in sorted(resident.items())]
        shares = share_energy(self.energy.delta(energy_reading), resident)
        out += [UsageRecord(model=m, energy_j=j, ts=now) for m, j in shares.items()]
        return out
