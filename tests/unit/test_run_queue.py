"""The sandbox run queue: a bounded number of slots, waiting runs served round-robin by flow."""

from __future__ import annotations

import asyncio

import pytest

from appliance.sandbox.errors import SandboxQueueFull
from appliance.sandbox.service import RunQueue, default_concurrency


async def _hold(
    q: RunQueue, flow: str | None, log: list[str], name: str, go: asyncio.Event
) -> None:
    async with q.slot(flow, bounded=flow is None):
        log.append(name)
        await go.wait()


async def test_waiting_flows_take_turns() -> None:
    q = RunQueue(1, 10)
    log: list[str] = []
    go = asyncio.Event()
    first = asyncio.create_task(_hold(q, "a", log, "a0", go))
    await asyncio.sleep(0)
    tasks = [asyncio.create_task(_hold(q, "a", log, f"a{i}", go)) for i in range(1, 4)]
    tasks.append(asyncio.create_task(_hold(q, None, log, "single", go)))
    tasks.append(asyncio.create_task(_hold(q, "b", log, "b1", go)))
    await asyncio.sleep(0)
    assert q.waiting == 5
    go.set()
    await asyncio.gather(first, *tasks)
    # flow a queued three cases first, yet the single run and flow b are served between them
    assert log == ["a0", "a1", "single", "b1", "a2", "a3"]
    assert (q.running, q.waiting) == (0, 0)


async def test_a_cancelled_wait_leaves_no_trace_and_a_cancelled_grant_is_passed_on() -> None:
    q = RunQueue(1, 10)
    go = asyncio.Event()
    log: list[str] = []
    holder = asyncio.create_task(_hold(q, "a", log, "holder", go))
    await asyncio.sleep(0)
    waiter = asyncio.create_task(_hold(q, "b", log, "cancelled", go))
    after = asyncio.create_task(_hold(q, "c", log, "after", go))
    await asyncio.sleep(0)
    waiter.cancel()
    go.set()
    await asyncio.gather(holder, after)
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert log == ["holder", "after"]
    assert (q.running, q.waiting) == (0, 0)


async def test_a_full_queue_refuses_single_runs_but_not_batch_cases() -> None:
    q = RunQueue(1, 1)
    go = asyncio.Event()
    log: list[str] = []
    tasks = [asyncio.create_task(_hold(q, None, log, "one", go))]
    await asyncio.sleep(0)
    tasks.append(asyncio.create_task(_hold(q, None, log, "two", go)))
    await asyncio.sleep(0)
    with pytest.raises(SandboxQueueFull):
        async with q.slot():
            pass
    tasks.append(asyncio.create_task(_hold(q, "batch", log, "case", go)))  # bounded by its batch
    await asyncio.sleep(0)
    assert q.waiting == 2
    go.set()
    await asyncio.gather(*tasks)
    assert sorted(log) == ["case", "one", "two"]


def test_default_concurrency_follows_cpus_and_memory() -> None:
    assert default_concurrency(8192, cpus=2) == 4
    assert default_concurrency(8192, cpus=16) == 32
    assert default_concurrency(512, cpus=16) == 2
    assert default_concurrency(100, cpus=1) == 2
