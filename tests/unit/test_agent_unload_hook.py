"""The scheduler's before-unload hooks: where sessions park their KV state before a worker goes.

Uses the scheduler fakes of test_scheduler: the hook must run while the worker is still alive,
for every kind of unload (idle, requested, evicted for memory), and a failing hook must not keep
a model loaded.
"""

from __future__ import annotations

import asyncio

from appliance.models.scheduler import Runner
from tests.unit.test_scheduler import MiB, make, model, prof


async def test_hook_runs_with_the_worker_alive_on_idle_unload() -> None:
    sched, spawner, clock = make([prof("a", idle_ttl_s=10)])
    seen: list[tuple[str, bool, str]] = []

    async def hook(r: Runner) -> None:
        seen.append((r.profile.id, r.worker.alive, r.state))

    sched.before_unload.append(hook)
    (await sched.acquire("a")).release()
    clock.t += 11
    assert await sched.reap_expired() == ["a"]
    assert seen == [("a", True, "unloading")]
    assert spawner.closed == ["/m/a.gguf"]


async def test_hook_runs_on_requested_unload_and_on_eviction_for_memory() -> None:
    sched, spawner, _ = make([prof("a"), prof("b")], budget=150 * MiB)
    for mid in ("a", "b"):
        spawner.sizes[f"/m/{mid}.gguf"] = 80 * MiB  # ~112 MiB each: only one fits
    seen: list[str] = []

    async def hook(r: Runner) -> None:
        seen.append(r.profile.id)

    sched.before_unload.append(hook)
    (await sched.acquire("a")).release()
    (await sched.acquire("b")).release()  # a must go for b to fit
    assert seen == ["a"]
    await sched.unload("b")
    assert seen == ["a", "b"]
    assert model(sched, "b")["state"] == "unloaded"


async def test_a_failing_hook_does_not_keep_the_model_loaded() -> None:
    sched, spawner, _ = make([prof("a")])

    async def broken(r: Runner) -> None:
        raise RuntimeError("disk full")

    sched.before_unload.append(broken)
    (await sched.acquire("a")).release()
    await sched.unload("a")
    assert model(sched, "a")["state"] == "unloaded"
    assert spawner.closed == ["/m/a.gguf"]


async def test_a_load_during_a_slow_hook_keeps_its_new_worker() -> None:
    sched, spawner, _ = make([prof("a")])
    gate = asyncio.Event()

    async def slow(r: Runner) -> None:
        await gate.wait()

    sched.before_unload.append(slow)
    (await sched.acquire("a")).release()
    unloading = asyncio.create_task(sched.unload("a"))
    await asyncio.sleep(0.01)
    assert model(sched, "a")["state"] == "unloading"
    waiting = asyncio.create_task(sched.acquire("a"))
    await asyncio.sleep(0.05)
    gate.set()
    await unloading
    lease = await waiting
    assert lease.worker.alive and lease.worker is spawner.spawned[-1]
    assert sched.runners["a"].worker is lease.worker, "the unload must not clear the new worker"
    lease.release()
