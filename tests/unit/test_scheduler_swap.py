"""The scheduler under churn, with fakes: spare pool bounds, recycling, parallel loads, thrash."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from appliance.config import ModelsConfig
from appliance.errors import InsufficientMemory
from appliance.models.scheduler import ModelScheduler
from appliance.models.worker import protocol as p
from tests.unit.test_scheduler import FakeSpawner, FakeWorker, MiB, make, model, prof

SPARE = 20 * MiB


class RecyclingWorker(FakeWorker):
    """A fake worker that can drop its model and become a spare (as WorkerProcess.unload)."""

    def __init__(self, spawner: FakeSpawner) -> None:
        super().__init__(spawner)
        self.recycled = 0
        self.gate: asyncio.Event | None = getattr(spawner, "gate", None)

    async def load(self, spec: p.Load, timeout: float) -> p.Loaded:
        spawner: Any = self.spawner
        spawner.loading += 1
        spawner.peak_loading = max(spawner.peak_loading, spawner.loading)
        try:
            gate = spawner.gates.get(spec.model_path)
            if gate is not None:
                await gate.wait()
            return await super().load(spec, timeout)
        finally:
            spawner.loading -= 1

    async def send(self, cmd: p.Command) -> None:
        pass

    async def unload(self, timeout: float = 10.0) -> int:
        self.loaded_path = None
        self.recycled += 1
        return SPARE


class RecyclingSpawner(FakeSpawner):
    def __init__(self) -> None:
        super().__init__()
        self.loading = 0
        self.peak_loading = 0
        self.gates: dict[str, asyncio.Event] = {}

    async def spawn(self) -> RecyclingWorker:  # type: ignore[override]
        w = RecyclingWorker(self)
        self.spawned.append(w)
        return w


class SpareMemory:
    """Every process holds SPARE bytes beyond what its model adds (what a spare costs)."""

    kind = "ram"

    def __init__(self, budget: int) -> None:
        self.budget = budget

    def budget_bytes(self) -> int:
        return self.budget

    def process_bytes(self, pid: int) -> int | None:
        return SPARE


def churn_sched(
    budget: int, ids: str = "ab", **cfg: Any
) -> tuple[ModelScheduler, RecyclingSpawner, Any]:
    sched, estimates, clock = make([prof(i) for i in ids], budget=budget)
    spawner = RecyclingSpawner()
    spawner.sizes = estimates.sizes = {"/m/a.gguf": 100 * MiB, "/m/b.gguf": 100 * MiB}
    sched.spawner = spawner
    sched.memory = SpareMemory(budget)
    sched.config = ModelsConfig(**{"spare_worker": True, "spare_workers": 1, **cfg})
    return sched, spawner, clock


def used(sched: ModelScheduler) -> int:
    st = sched.stats()
    return int(st["memory_used_bytes"] + st["spare_memory_bytes"])


async def settle(sched: ModelScheduler) -> None:
    for _ in range(50):
        await asyncio.sleep(0)
        task = sched._spare_task
        if task is None or task.done():
            return
        await asyncio.sleep(0.001)


async def test_back_to_back_swaps_reuse_workers_and_report_thrash() -> None:
    sched, spawner, clock = churn_sched(160 * MiB, thrash_loads=4, thrash_window_s=60)
    events: list[dict[str, Any]] = []
    orig = sched.events.publish

    def publish(kind: str, **kw: Any) -> None:
        events.append({"type": kind, **kw})
        orig(kind, **kw)

    sched.events.publish = publish  # type: ignore[method-assign]
    await sched.start()
    try:
        for i in range(20):
            mid = "ab"[i % 2]
            (await sched.acquire(mid)).release()
            clock.t += 0.5
            assert used(sched) <= 160 * MiB, "models and spares stay inside the budget"
        assert model(sched, "a")["load_count"] == 10 and model(sched, "b")["load_count"] == 10
        assert (
            model(sched, "a")["counters"]["swaps"] == 9
            and model(sched, "b")["counters"]["swaps"] == 9
        )
        assert len(spawner.spawned) <= 2, "after the first swap every load reuses a recycled worker"
        thrash = [e for e in events if e["type"] == "model.thrashing"]
        assert {e["model"] for e in thrash} == {"a", "b"}
        assert len(thrash) == 2, "reported once per window, not on every swap"
    finally:
        await sched.stop()
    assert not any(w.alive for w in spawner.spawned), "no worker is left over"


async def test_spares_never_push_over_the_budget_and_go_before_models() -> None:
    # room for one model and no spare beside it
    sched, _spawner, _ = churn_sched(140 * MiB, spare_workers=3)
    await sched.start()
    try:
        await settle(sched)
        assert sched.spare_count == 3 and used(sched) <= 140 * MiB
        (await sched.acquire("a")).release()
        await settle(sched)
        assert used(sched) <= 140 * MiB
        assert sched.spare_count == 0, (
            "the spares were closed for the model, none started beside it"
        )
        assert model(sched, "a")["state"] == "ready"
    finally:
        await sched.stop()


async def test_idle_spares_beyond_the_target_are_trimmed() -> None:
    sched, spawner, clock = churn_sched(10_000 * MiB, ids="abc", spare_idle_s=30)
    spawner.sizes["/m/c.gguf"] = 150 * MiB

    def est(mid: str) -> int:
        return sched.gguf_info(Path(f"/m/{mid}.gguf")).estimate_bytes(64, 1, gpu=False)

    # a and b fit beside one spare; c needs both of them out, and both recycled workers fit beside it
    sched.memory = SpareMemory(est("a") + est("b") + SPARE)
    assert est("c") > est("a") + SPARE and est("c") + 2 * SPARE <= est("a") + est("b") + SPARE
    await sched.start()
    try:
        await settle(sched)
        for mid in ("a", "b", "c"):  # c evicts a and b; each worker becomes a spare
            (await sched.acquire(mid)).release()
            await settle(sched)
        assert model(sched, "a")["state"] == model(sched, "b")["state"] == "unloaded"
        assert sched.spare_count == 2
        clock.t += 10
        await sched.reap_expired()
        assert sched.spare_count == 2, "not idle long enough yet"
        clock.t += 25
        await sched.reap_expired()
        await asyncio.sleep(0)
        assert sched.spare_count == 1, "trimmed down to spare_workers"
    finally:
        await sched.stop()


async def test_two_models_that_fit_load_in_parallel() -> None:
    sched, spawner, _ = churn_sched(10_000 * MiB)
    gate = asyncio.Event()
    spawner.gates = {"/m/a.gguf": gate, "/m/b.gguf": gate}
    await sched.start()
    try:
        ta = asyncio.create_task(sched.acquire("a"))
        tb = asyncio.create_task(sched.acquire("b"))
        for _ in range(100):
            await asyncio.sleep(0.001)
            if spawner.loading == 2:
                break
        assert spawner.loading == 2, "both loads run at once"
        gate.set()
        for lease in await asyncio.gather(ta, tb):
            lease.release()
    finally:
        await sched.stop()


async def test_a_slow_load_does_not_delay_a_loaded_model() -> None:
    sched, spawner, _ = churn_sched(10_000 * MiB)
    await sched.start()
    try:
        (await sched.acquire("a")).release()
        spawner.gates["/m/b.gguf"] = asyncio.Event()
        tb = asyncio.create_task(sched.acquire("b"))
        await asyncio.sleep(0.01)
        assert model(sched, "b")["state"] == "loading"
        lease = await asyncio.wait_for(sched.acquire("a"), 0.5)
        lease.release()
        spawner.gates["/m/b.gguf"].set()
        (await tb).release()
    finally:
        await sched.stop()


async def test_a_model_with_requests_is_never_evicted_under_churn() -> None:
    sched, _spawner, _ = churn_sched(160 * MiB)
    await sched.start()
    try:
        held = await sched.acquire("a")
        tb = asyncio.create_task(sched.acquire("b"))
        await asyncio.sleep(0.05)
        assert not tb.done(), "b waits for the room a holds"
        assert held.worker.alive and model(sched, "a")["state"] == "busy", (
            "a is not evicted while busy"
        )
        held.release()  # a goes idle: b evicts it and loads
        (await asyncio.wait_for(tb, 1.0)).release()
        assert model(sched, "a")["state"] == "unloaded" and model(sched, "b")["state"] == "ready"
        sched.config.evict_wait_s = 0.05
        held = await sched.acquire("b")
        with pytest.raises(InsufficientMemory):  # past evict_wait_s the request gets 507
            await sched.acquire("a")
        held.release()
    finally:
        await sched.stop()


async def test_snapshot_reports_swap_tiers() -> None:
    sched, _spawner, _ = churn_sched(10_000 * MiB)
    await sched.start()
    try:
        (await sched.acquire("a")).release()
        m = model(sched, "a")
        assert m["swap_tier"] == "hot" and m["swap_cost_ms"]["hot"] == 0.0
        assert model(sched, "b")["swap_tier"] == "cold"  # never loaded, no local file
    finally:
        await sched.stop()


async def test_a_worker_past_its_recycle_limit_is_closed_not_recycled() -> None:
    sched, spawner, _ = churn_sched(160 * MiB, recycle_limit=2)
    await sched.start()
    try:
        for i in range(8):
            (await sched.acquire("ab"[i % 2])).release()
            await settle(sched)
        assert all(w.recycled <= 2 for w in spawner.spawned)
        assert len(spawner.spawned) > 2, "retired workers were replaced by fresh ones"
        assert sum(w.alive for w in spawner.spawned) <= 2, "one model's worker and one spare"
    finally:
        await sched.stop()
    assert not any(w.alive for w in spawner.spawned)


async def test_a_fresh_spare_starts_once_the_waking_request_is_answered() -> None:
    # a worker's start takes the cores a woken model's first tokens need on a small box
    sched, spawner, _ = churn_sched(10_000 * MiB)
    await sched.start()
    try:
        await settle(sched)
        assert sched.spare_count == 1
        lease = await sched.acquire("a")  # takes the spare
        await asyncio.sleep(0.05)
        assert sched.spare_count == 0 and len(spawner.spawned) == 1, (
            "no spare starts while the request that woke the model runs"
        )
        # another model's load does not wait for that deferred refill: it starts its own worker
        other = await asyncio.wait_for(sched.acquire("b"), 0.5)
        other.release()
        lease.release()
        for _ in range(100):
            await asyncio.sleep(0.005)
            if sched.spare_count:
                break
        assert sched.spare_count == 1, "the spare starts once the request is answered"
    finally:
        await sched.stop()
