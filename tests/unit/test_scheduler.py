"""The scheduler's logic with fakes for the worker spawner, the clock and the memory probe."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from appliance.config import ModelsConfig
from appliance.errors import InsufficientMemory, ModelUnavailable, QueueFull
from appliance.models.catalog import ModelCatalog
from appliance.models.gguf_info import GgufInfo
from appliance.models.profile import ModelProfile
from appliance.models.scheduler import ModelScheduler
from appliance.models.worker import protocol as p

MiB = 2**20


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def monotonic(self) -> float:
        return self.t

    def time(self) -> float:
        return 1_700_000_000.0 + self.t


class FakeWorker:
    _pids = iter(range(100, 10_000))

    def __init__(self, spawner: FakeSpawner) -> None:
        self.pid = next(self._pids)
        self.model_id: str | None = None
        self.on_exit: Any = None
        self.spawner = spawner
        self._alive = True
        self.loaded_path: str | None = None
        self.visible = None if spawner.visible is None else set(spawner.visible)

    def sees(self, path: str) -> bool:
        return self.visible is None or path in self.visible

    @property
    def alive(self) -> bool:
        return self._alive

    async def load(self, spec: p.Load, timeout: float) -> p.Loaded:
        await asyncio.sleep(0.01)  # let racing requests pile up behind one load
        if spec.model_path in self.spawner.fail_paths:
            raise ModelUnavailable("llama.cpp could not load it")
        self.loaded_path = spec.model_path
        self.spawner.loads.append(spec.model_path)
        return p.Loaded(
            load_ms=1.0,
            memory_bytes=self.spawner.sizes.get(spec.model_path, 10 * MiB),
            n_ctx=spec.n_ctx,
            n_ctx_train=spec.n_ctx,
            metadata={},
        )

    async def close(self, grace: float = 3.0) -> None:
        self._alive = False
        self.spawner.closed.append(self.loaded_path)

    def crash(self) -> None:
        self._alive = False
        if self.on_exit:
            self.on_exit(self, "the worker process of model 'x' was killed by SIGKILL")


class FakeSpawner:
    def __init__(self) -> None:
        self.spawned: list[FakeWorker] = []
        self.loads: list[str] = []
        self.closed: list[str | None] = []
        self.sizes: dict[str, int] = {}
        self.fail_paths: set[str] = set()
        self.visible: set[str] | None = None
        """Model paths the workers spawned from now on can see (a jail); None: all."""

    async def spawn(self) -> FakeWorker:
        w = FakeWorker(self)
        self.spawned.append(w)
        return w


class FakeFetcher:
    def local_path(self, profile_id: str, source: str, convert: str | None) -> Path:
        return Path(source)

    def ensure(
        self, profile_id: str, source: str, convert: str | None, progress: Any = None
    ) -> Path:
        return Path(source)


class FakeMemory:
    kind = "ram"

    def __init__(self, budget: int) -> None:
        self.budget = budget

    def budget_bytes(self) -> int:
        return self.budget

    def process_bytes(self, pid: int) -> int | None:
        return None


def make(
    profiles: list[ModelProfile],
    *,
    budget: int = 10_000 * MiB,
    queue_size: int = 4,
    ttl: float = 300.0,
) -> tuple[ModelScheduler, FakeSpawner, FakeClock]:
    catalog = ModelCatalog({pr.id: pr for pr in profiles}, FakeFetcher(), Path("/nonexistent"))  # type: ignore[arg-type]
    spawner = FakeSpawner()
    clock = FakeClock()

    def info(path: Path) -> GgufInfo:
        size = spawner.sizes.get(str(path), 10 * MiB)
        return GgufInfo("llama", size, 0, 0, 1, 1, 0, 0, 512)

    sched = ModelScheduler(
        catalog,
        spawner=spawner,
        memory=FakeMemory(budget),
        config=ModelsConfig(queue_size=queue_size, default_idle_ttl_s=ttl, spare_worker=False),
        clock=clock,
        gguf_info=info,
    )
    return sched, spawner, clock


def prof(mid: str, **kw: Any) -> ModelProfile:
    return ModelProfile(id=mid, source=f"/m/{mid}.gguf", context_size=64, **kw)


def model(sched: ModelScheduler, mid: str) -> dict[str, Any]:
    return next(m.to_dict() for m in sched.snapshot() if m.id == mid)


async def test_racing_first_requests_load_once() -> None:
    sched, spawner, _ = make([prof("a", parallel=4)])
    leases = await asyncio.gather(*(sched.acquire("a") for _ in range(4)))
    assert spawner.loads == ["/m/a.gguf"]
    assert len(spawner.spawned) == 1
    assert model(sched, "a")["active"] == 4
    for lease in leases:
        lease.release()
    assert model(sched, "a")["state"] == "ready"


async def test_idle_timer_starts_when_last_request_ends_and_unloads() -> None:
    sched, spawner, clock = make([prof("a", parallel=2, idle_ttl_s=30)])
    l1 = await sched.acquire("a")
    l2 = await sched.acquire("a")
    l1.release()
    assert model(sched, "a")["idle_deadline"] is None  # one request still running
    l2.release()
    assert model(sched, "a")["idle_deadline"] == pytest.approx(clock.time() + 30)
    clock.t += 29
    assert await sched.reap_expired() == []
    clock.t += 2
    assert await sched.reap_expired() == ["a"]
    assert model(sched, "a")["state"] == "unloaded"
    assert spawner.closed == ["/m/a.gguf"]
    # wakes on the next request
    (await sched.acquire("a")).release()
    assert model(sched, "a")["load_count"] == 2


async def test_keep_alive_zero_unloads_at_once_and_minus_one_never() -> None:
    sched, _spawner, clock = make([prof("a"), prof("b")])
    (await sched.acquire("a", keep_alive=0)).release()
    await asyncio.sleep(0.01)
    assert model(sched, "a")["state"] == "unloaded"
    (await sched.acquire("b", keep_alive=-1)).release()
    clock.t += 10**6
    assert await sched.reap_expired() == []
    assert model(sched, "b")["state"] == "ready"
    assert model(sched, "b")["idle_deadline"] is None


async def test_pinned_model_never_expires_until_unpinned() -> None:
    sched, _, clock = make([prof("a", idle_ttl_s=5)])
    await sched.pin("a", True)
    assert model(sched, "a")["state"] == "ready"
    clock.t += 100
    assert await sched.reap_expired() == []
    await sched.pin("a", False)
    clock.t += 6
    assert await sched.reap_expired() == ["a"]


async def test_lru_eviction_makes_room() -> None:
    sched, spawner, clock = make([prof("a"), prof("b"), prof("c")], budget=250 * MiB)
    for mid in ("a", "b", "c"):
        spawner.sizes[f"/m/{mid}.gguf"] = 80 * MiB  # ~112 MiB with KV and compute buffers
    (await sched.acquire("a")).release()
    clock.t += 1
    (await sched.acquire("b")).release()
    clock.t += 1
    (await sched.acquire("a")).release()  # a is now more recently used than b
    clock.t += 1
    (await sched.acquire("c")).release()
    states = {m.id: m.state for m in sched.snapshot()}
    assert states == {"a": "ready", "b": "unloaded", "c": "ready"}
    assert model(sched, "b")["counters"]["evictions"] == 1


async def test_model_that_cannot_fit_gets_insufficient_memory() -> None:
    sched, spawner, _ = make([prof("a"), prof("b"), prof("huge")], budget=250 * MiB)
    spawner.sizes.update({"/m/a.gguf": 80 * MiB, "/m/b.gguf": 80 * MiB, "/m/huge.gguf": 400 * MiB})
    with pytest.raises(InsufficientMemory, match="whole memory budget"):
        await sched.acquire("huge")
    busy = await sched.acquire("a")
    await sched.pin("b", True)
    spawner.sizes["/m/huge.gguf"] = 80 * MiB
    sched.config.evict_wait_s = 0.05  # room held by a busy model: a short wait, then 507
    with pytest.raises(InsufficientMemory, match=r"a \(112 MiB, busy\).*b \(112 MiB, pinned\)"):
        await sched.acquire("huge")
    busy.release()
    assert model(sched, "huge")["state"] == "failed"
    (await sched.acquire("huge")).release()  # a is idle now and gets evicted
    assert model(sched, "a")["state"] == "unloaded"


async def test_full_queue_fails_fast_with_retry_after() -> None:
    sched, _, _ = make([prof("a", parallel=1)], queue_size=2)
    first = await sched.acquire("a")
    waiting = [asyncio.create_task(sched.acquire("a")) for _ in range(2)]
    await asyncio.sleep(0.01)
    assert model(sched, "a")["waiting"] == 2
    with pytest.raises(QueueFull) as info:
        await sched.acquire("a")
    assert info.value.status == 503
    assert "Retry-After" in info.value.headers
    first.release()
    second = await waiting[0]
    second.release()
    (await waiting[1]).release()


async def test_crashed_worker_marks_failed_and_next_request_reloads() -> None:
    sched, spawner, _ = make([prof("a")])
    (await sched.acquire("a")).release()
    spawner.spawned[0].crash()
    m = model(sched, "a")
    assert m["state"] == "failed"
    assert "SIGKILL" in m["last_error"]
    (await sched.acquire("a")).release()
    assert model(sched, "a")["state"] == "ready"
    assert len(spawner.spawned) == 2


async def test_failed_load_reports_error_and_is_retried() -> None:
    sched, spawner, _ = make([prof("a")])
    spawner.fail_paths.add("/m/a.gguf")
    with pytest.raises(ModelUnavailable):
        await sched.acquire("a")
    assert model(sched, "a")["state"] == "failed"
    assert "could not load" in model(sched, "a")["last_error"]
    spawner.fail_paths.clear()
    (await sched.acquire("a")).release()
    assert model(sched, "a")["state"] == "ready"
    assert model(sched, "a")["last_error"] is None


async def test_unload_while_busy_waits_for_the_request() -> None:
    sched, _, _ = make([prof("a")])
    lease = await sched.acquire("a")
    await sched.unload("a")
    assert model(sched, "a")["state"] == "busy"
    lease.release()
    await asyncio.sleep(0.01)
    assert model(sched, "a")["state"] == "unloaded"


async def test_cancelled_waiter_does_not_cancel_the_shared_load() -> None:
    sched, spawner, _ = make([prof("a")])
    t1 = asyncio.create_task(sched.acquire("a"))
    t2 = asyncio.create_task(sched.acquire("a"))
    await asyncio.sleep(0)
    t1.cancel()
    lease = await t2
    assert spawner.loads == ["/m/a.gguf"]
    lease.release()
    assert model(sched, "a")["waiting"] == 0


async def test_a_jailed_spare_that_cannot_see_the_model_is_replaced_by_a_fresh_worker() -> None:
    sched, spawner, _ = make([prof("a"), prof("b")])
    sched.config = ModelsConfig(spare_worker=True)
    spawner.visible = {"/m/a.gguf"}
    await sched.start()
    try:
        for _ in range(100):
            if sched.spare_ready:
                break
            await asyncio.sleep(0.01)
        assert sched.spare_ready
        spare = spawner.spawned[0]
        spawner.visible = {"/m/a.gguf", "/m/b.gguf"}  # b became known after the spare started
        (await sched.acquire("b")).release()
        assert spare.loaded_path is None and not spare.alive, "the blind spare was closed, not used"
        assert spawner.spawned[1].loaded_path == "/m/b.gguf"
    finally:
        await sched.stop()
