"""The model scheduler: the one owner of model lifetimes.

Handlers never start or stop models; they ask `acquire(model_id)` for a lease, use the worker it
holds, and release it. The scheduler loads a model on the first request (two racing first requests
share one load), keeps a reference count, arms the idle timer when the last request ends, unloads
on expiry (or at once for keep_alive 0; never for -1 or a pinned model), and before a load evicts
idle models, least recently used first, until the estimate fits the memory budget. A model that
cannot fit gets InsufficientMemory (507), never an OOM crash. Each model has `parallel` slots and a
bounded queue; beyond it a request fails fast with QueueFull (503 + Retry-After).

Everything that touches the machine is passed in: the worker spawner, the memory probe, the clock,
the GGUF reader, so unit tests drive this logic with fakes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from appliance.config import ModelsConfig
from appliance.errors import ApplianceError, InsufficientMemory, ModelUnavailable, QueueFull
from appliance.models.catalog import ModelCatalog
from appliance.models.gguf_info import GgufInfo, read_gguf_info
from appliance.models.memory import MemoryProbe
from appliance.models.runner import Clock, ModelStatus, Runner, Spawner, SystemClock, Worker
from appliance.models.worker import protocol as p
from appliance.telemetry.events import EventBus

__all__ = [
    "Clock",
    "Lease",
    "ModelScheduler",
    "ModelStatus",
    "Runner",
    "Spawner",
    "SystemClock",
    "Worker",
]

log = logging.getLogger("appliance.scheduler")

MiB = 2**20

REFILL_WAIT_S = 1.0
"""The longest a fresh spare's start waits, after a load, for the requests that woke the model."""


class Lease:
    """One request's hold on a loaded model. Release exactly once (it is an async context manager)."""

    def __init__(self, scheduler: ModelScheduler, runner: Runner, worker: Worker) -> None:
        self.scheduler = scheduler
        self.runner = runner
        self.worker = worker
        """The loaded model's worker, for the lease's requests."""
        self.profile = runner.profile
        self.queue_ms = 0.0
        self.load_ms: float | None = None
        self._released = False

    def release(self) -> None:
        if not self._released:
            self._released = True
            self.scheduler._release(self.runner)

    async def __aenter__(self) -> Lease:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.release()


class ModelScheduler:
    def __init__(
        self,
        catalog: ModelCatalog,
        *,
        spawner: Spawner,
        memory: MemoryProbe,
        config: ModelsConfig,
        clock: Clock | None = None,
        events: EventBus | None = None,
        gguf_info: Callable[[Path], GgufInfo] = read_gguf_info,
        kv_ram_budget: int = 0,
    ) -> None:
        self.catalog = catalog
        self.kv_ram_budget = kv_ram_budget
        """Bytes of parked sessions' KV state each chat worker keeps in RAM (agents config)."""
        self.spawner = spawner
        self.memory = memory
        self.config = config
        self.clock = clock or SystemClock()
        self.events = events or EventBus()
        self.gguf_info = gguf_info
        self.runners: dict[str, Runner] = {}
        self._load_lock = asyncio.Lock()
        self._spares: list[_Spare] = []
        self._spare_size: int | None = None
        """The largest resident size a fresh spare was measured at (what the next one will cost)."""
        self._spawn_ms: float | None = None
        """How long the last worker process took to start (what a swap costs with no spare)."""
        self._spare_task: asyncio.Task[None] | None = None
        self._spare_starting = False
        """Set while the refill task is starting a process (not while it waits to start one)."""
        self._reaper: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._idle_event = asyncio.Event()
        self._stopping = False
        self._last_model_path: str | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self.before_unload: list[Callable[[Runner], Awaitable[None]]] = []
        """Awaited when a model is about to be unloaded, while its worker is still alive (the
        session service parks KV state there). A hook that fails is logged, never stops the unload."""

    # --- lifecycle of the scheduler itself ----------------------------------------------------

    async def start(self) -> None:
        self._reaper = asyncio.create_task(self._reap_loop())
        for prof in self.catalog.all():
            if prof.pinned:
                self._runner(prof.id).pinned = True
        self._refill_spares()

    async def stop(self) -> None:
        self._stopping = True
        if self._reaper:
            self._reaper.cancel()
        for t in list(self._tasks):
            t.cancel()
        if self._spare_task:
            self._spare_task.cancel()
            with contextlib.suppress(BaseException):
                await self._spare_task
        closers = [r.worker.close() for r in self.runners.values() if r.worker is not None]
        closers += [sp.worker.close() for sp in self._spares]
        self._spares = []
        await asyncio.gather(*closers, return_exceptions=True)
        for r in self.runners.values():
            r.worker = None
            r.state = "unloaded"

    # --- requests ----------------------------------------------------------------------------

    def _runner(self, model_id: str) -> Runner:
        prof = self.catalog.get(model_id)
        r = self.runners.get(model_id)
        if r is None or r.profile is not prof:
            if r is None:
                r = Runner(profile=prof, slots=asyncio.Semaphore(prof.parallel), pinned=prof.pinned)
                self.runners[model_id] = r
            else:
                r.profile = prof
        return r

    async def acquire(self, model_id: str, *, keep_alive: float | None = None) -> Lease:
        """Wait for a slot on a loaded model (loading it first if needed)."""
        r = self._runner(model_id)
        limit = r.profile.parallel + self.config.queue_size
        if r.active + r.waiting >= limit:
            raise QueueFull(
                f"model {model_id!r} has {r.active} requests running and {r.waiting} waiting "
                f"(limit {limit}); retry shortly",
                retry_after=max(1, r.waiting // max(1, r.profile.parallel)),
            )
        t0 = self.clock.monotonic()
        r.waiting += 1
        r.expires_at = None
        lease_load_ms: float | None = None
        try:
            while True:
                if r.state not in ("ready", "busy"):
                    tl = self.clock.monotonic()
                    await self._ensure_loaded(r)
                    lease_load_ms = (self.clock.monotonic() - tl) * 1000.0
                await r.slots.acquire()
                worker = r.worker
                if worker is not None and worker.alive and r.state in ("ready", "busy"):
                    break
                r.slots.release()  # the worker died or was unloaded while we waited: load again
        except BaseException:
            r.waiting -= 1
            self._arm_idle(r)
            raise
        r.waiting -= 1
        r.active += 1
        r.state = "busy"
        r.counters["requests"] += 1
        r.keep_alive = keep_alive
        lease = Lease(self, r, worker)
        lease.queue_ms = (self.clock.monotonic() - t0) * 1000.0
        lease.load_ms = lease_load_ms
        return lease

    def _release(self, r: Runner) -> None:
        r.active -= 1
        r.slots.release()
        r.last_used = self.clock.time()
        r.last_used_mono = self.clock.monotonic()
        if r.active == 0 and r.state == "busy":
            r.state = "ready"
            self._idle_event.set()  # a load waiting for room may evict it now
        self._arm_idle(r)

    # --- idle timers -------------------------------------------------------------------------

    def idle_ttl(self, r: Runner) -> float:
        if r.keep_alive is not None:
            return r.keep_alive
        if r.profile.idle_ttl_s is not None:
            return r.profile.idle_ttl_s
        return self.config.default_idle_ttl_s

    def _arm_idle(self, r: Runner) -> None:
        if not r.idle:
            return
        if r.unload_when_idle:
            r.unload_when_idle = False
            self._spawn_task(self._unload(r, "requested"))
            return
        if r.pinned:
            r.expires_at = None
            return
        ttl = self.idle_ttl(r)
        if ttl < 0:
            r.expires_at = None
        elif ttl == 0:
            self._spawn_task(self._unload(r, "keep_alive 0"))
        else:
            r.expires_at = self.clock.monotonic() + ttl
            self._wake.set()

    async def reap_expired(self) -> list[str]:
        """Unload every idle model whose deadline has passed; returns their ids."""
        now = self.clock.monotonic()
        expired = [
            r
            for r in self.runners.values()
            if r.idle and r.expires_at is not None and r.expires_at <= now
        ]
        for r in expired:
            await self._unload(r, "idle")
        self.trim_spares()
        return [r.profile.id for r in expired]

    async def _reap_loop(self) -> None:
        while True:
            deadlines = [
                r.expires_at for r in self.runners.values() if r.expires_at is not None and r.idle
            ]
            trim_at = self._next_trim()
            if trim_at is not None:
                deadlines.append(trim_at)
            timeout = max(0.0, min(deadlines) - self.clock.monotonic()) if deadlines else 3600.0
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)
            try:
                await self.reap_expired()
            except Exception:
                log.exception("idle reaper failed")

    # --- load / unload -----------------------------------------------------------------------

    async def _ensure_loaded(self, r: Runner) -> None:
        if r.load_task is None or r.load_task.done():
            r.load_task = asyncio.create_task(self._load(r))
        # shield: a waiter that gives up (client gone) must not cancel the load for the others
        await asyncio.shield(r.load_task)

    def _set_state(self, r: Runner, state: str, **extra: Any) -> None:
        r.state = state
        self.events.publish("model.state", model=r.profile.id, state=state, **extra)

    async def _load(self, r: Runner) -> None:
        prof = r.profile
        worker: Worker | None = None
        t_start = self.clock.monotonic()
        try:
            self._set_state(r, "loading")
            r.last_error = None
            # a fetch or a slow disk delays this model only: nothing below holds the admission lock
            path, info, tier = await asyncio.to_thread(self._prepare, prof.id)
            r.memory_estimate = info.estimate_bytes(
                prof.context_size, prof.parallel, gpu=self.memory.kind == "gpu"
            )
            loop = asyncio.get_running_loop()  # a real wait, whatever clock the scheduler is given
            wait_until = loop.time() + self.config.evict_wait_s
            while True:
                async with self._load_lock:  # admission only: room is made and reserved atomically
                    worker = self._pop_spare(str(path))
                    try:
                        await self._make_room(
                            r, r.memory_estimate, may_wait=loop.time() < wait_until
                        )
                    except BaseException as exc:
                        if worker is not None:
                            self._spares.insert(
                                0, _Spare(worker, self._spare_rss(worker), self.clock.monotonic())
                            )
                            worker = None
                        if not isinstance(exc, _WaitForIdle):
                            raise
                    else:
                        r.reserved = True
                        break
                # the room is held by busy models: wait (outside the lock) for one to go idle
                self._idle_event.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(
                        self._idle_event.wait(), max(0.01, wait_until - loop.time())
                    )
            t_admitted = t0 = self.clock.monotonic()
            if worker is None:
                worker = await self._take_worker(str(path))
            worker.model_id = prof.id
            worker.on_exit = lambda w, msg: self._worker_exited(r, w, msg)
            t_worker = self.clock.monotonic()
            loaded = await worker.load(
                p.Load(
                    model_path=str(path),
                    kind=prof.kind,
                    n_ctx=prof.context_size,
                    n_gpu_layers=prof.gpu_layers,
                    n_threads=prof.threads,
                    n_batch=prof.batch_size,
                    parallel=prof.parallel,
                    kv_unified=prof.kv_unified,
                    flash_attn=prof.flash_attention,
                    kv_ram_budget=self.kv_ram_budget if prof.kind == "chat" else 0,
                    chat_template=prof.chat_template,
                ),
                timeout=self.config.load_timeout_s,
            )
            r.worker = worker
            r.reserved = False
            r.loaded = loaded
            r.model_path = str(path)
            self._last_model_path = str(path)
            r.load_count += 1
            r.last_load_ms = (self.clock.monotonic() - t0) * 1000.0
            if tier != "unknown":
                r.load_ms_by_tier[tier] = r.last_load_ms
            r.memory_measured = self._measured(worker.pid, loaded, r.memory_estimate)
            swap = self._note_swap(r)
            phases = {
                "admit_ms": round((t_admitted - t_start) * 1000.0, 1),
                "worker_ms": round((t_worker - t_admitted) * 1000.0, 1),
                "worker_load_ms": round((self.clock.monotonic() - t_worker) * 1000.0, 1),
            }
            log.info("model %s ready (%s, %s)", prof.id, tier, phases)
            self._set_state(
                r,
                "ready",
                load_ms=r.last_load_ms,
                memory_bytes=r.memory_measured,
                tier=tier,
                swap=swap,
                **phases,
            )
            # the next spare starts after this load, not during it, and once the requests that
            # woke the model are answered: on a small box a worker's start (a Python start and
            # the llama_cpp import, ~0.5 s of CPU) takes the cores the load and the first tokens
            # use. A swap does not wait for it: the evicted model's worker is the next spare.
            self._refill_spares(after=r)
        except BaseException as exc:
            r.reserved = False
            if worker is not None:
                worker.on_exit = None
                with contextlib.suppress(Exception):
                    await worker.close(grace=0.5)
            r.worker = None
            r.memory_measured = 0
            r.last_error = (
                exc.message if isinstance(exc, ApplianceError) else f"{type(exc).__name__}: {exc}"
            )
            if isinstance(exc, asyncio.CancelledError):
                r.last_error = "load cancelled"
            self._set_state(r, "failed", error=r.last_error)
            self._refill_spares(delay=1.0)
            if isinstance(exc, ApplianceError | asyncio.CancelledError):
                raise
            raise ModelUnavailable(f"model {prof.id!r} failed to load: {r.last_error}") from exc

    def _prepare(self, model_id: str) -> tuple[Path, GgufInfo, str]:
        """Blocking, in a thread (one hop: each costs a scheduling round on a busy small box):
        the file (fetched if needed), its GGUF facts, and whether it is in the page cache."""
        path = self.catalog.ensure_local(model_id, self._progress(model_id))
        tier = file_tier(str(path))  # before the GGUF read, which would warm its header
        return path, self.gguf_info(path), tier

    def _note_swap(self, r: Runner) -> bool:
        """Count a load that follows this model's eviction; report a model that keeps swapping."""
        if not r.evicted:
            return False
        r.evicted = False
        r.counters["swaps"] += 1
        now = self.clock.monotonic()
        window = self.config.thrash_window_s
        r.swap_loads.append(now)
        while r.swap_loads and r.swap_loads[0] < now - window:
            r.swap_loads.popleft()
        if len(r.swap_loads) >= self.config.thrash_loads and (
            r.thrash_reported is None or now - r.thrash_reported >= window
        ):
            r.thrash_reported = now
            r.counters["thrash"] += 1
            budget = self.memory.budget_bytes()
            self.events.publish(
                "model.thrashing",
                model=r.profile.id,
                swaps=len(r.swap_loads),
                window_s=window,
                budget_bytes=budget,
                detail=f"model {r.profile.id!r} was evicted and loaded again {len(r.swap_loads)} times in "
                f"{window:g}s: the memory budget ({budget // MiB} MiB) is too small for the models in use; "
                "raise models.memory_budget_mb or pin the model",
            )
            log.warning(
                "model %s is thrashing: %d swaps in %gs", r.profile.id, len(r.swap_loads), window
            )
        return True

    def _measured(self, pid: int, loaded: p.Loaded, estimate: int) -> int:
        """What a loaded model holds. NVML's per-process figure is exact on a GPU; in RAM the
        worker's resident growth undercounts (mmap'd weights and the KV cache become resident
        only as they are touched), so there the measurement can only raise the estimate."""
        if self.memory.kind == "gpu":
            return int(self.memory.process_bytes(pid) or estimate)
        return max(estimate, int(loaded.memory_bytes or 0))

    def _progress(self, model_id: str) -> Callable[[str, float | None, str], None]:
        def report(stage: str, fraction: float | None, detail: str) -> None:
            self.events.publish(
                "model.fetch", model=model_id, stage=stage, fraction=fraction, detail=detail
            )

        return report

    async def _make_room(self, r: Runner, need: int, *, may_wait: bool = False) -> None:
        """Evict until `need` fits beside the resident models and the spares. Idle models go,
        least recently used first, only as far as the models alone must (each evicted worker
        becomes a spare); then spares are closed, oldest first, until the rest fits. So no model
        is evicted to keep a spare, and no spare is closed that an eviction would have made
        redundant. Called under the admission lock."""
        budget = self.memory.budget_bytes()
        if need > budget:
            raise InsufficientMemory(
                f"model {r.profile.id!r} needs about {need // MiB} MiB but the whole memory budget is "
                f"{budget // MiB} MiB; lower its context_size/parallel or raise models.memory_budget_mb"
            )
        while True:
            models = sum(o.memory_bytes for o in self.runners.values() if o is not r and o.resident)
            spares = sum(sp.rss for sp in self._spares)
            if models + spares + need <= budget:
                return
            victims = sorted(
                (
                    o
                    for o in self.runners.values()
                    if o is not r and o.idle and not o.pinned and o.worker is not None
                ),
                key=lambda o: o.last_used_mono,
            )
            if models + need <= budget and self._spares:  # the models fit: spares make the room
                await self._close_spare(self._spares.pop(0), "to make room")
                continue
            if not victims:
                busy = [
                    o for o in self.runners.values() if o is not r and o.resident and not o.pinned
                ]
                if may_wait and busy:
                    raise _WaitForIdle
                held = [
                    f"{o.profile.id} ({o.memory_bytes // MiB} MiB, {'pinned' if o.pinned else 'busy'})"
                    for o in self.runners.values()
                    if o is not r and o.resident
                ]
                raise InsufficientMemory(
                    f"model {r.profile.id!r} needs about {need // MiB} MiB; {models // MiB} of "
                    f"{budget // MiB} MiB are held by {', '.join(held)}. Unload or unpin a model, or retry "
                    "when they are idle",
                    code="insufficient_memory",
                )
            victim = victims[0]
            victim.counters["evictions"] += 1
            victim.evicted = True
            self.events.publish("model.evicted", model=victim.profile.id, for_model=r.profile.id)
            await self._unload(victim, f"evicted for {r.profile.id}", recycle=True)

    async def _unload(self, r: Runner, reason: str, *, recycle: bool = False) -> None:
        """Unload an idle model. An eviction (`recycle`) hands its worker to the spare pool,
        since another load is waiting; an idle or requested unload ends the process."""
        if r.worker is None or not r.idle:
            return
        worker = r.worker
        worker.on_exit = None
        self._set_state(r, "unloading", reason=reason)
        r.expires_at = None
        try:
            for hook in list(self.before_unload):
                try:
                    await hook(r)
                except Exception:
                    log.exception("a before-unload hook of %s failed", r.profile.id)
            if recycle:
                await self._retire(worker)
            else:
                await worker.close()
        finally:
            if r.worker is worker:  # a request may have loaded a new worker meanwhile
                r.worker = None
                r.memory_measured = 0
                self._set_state(r, "unloaded", reason=reason)
        if self.config.page_cache and r.model_path:
            self._spawn_task(asyncio.to_thread(_keep_in_page_cache, r.model_path))

    def _worker_exited(self, r: Runner, worker: Worker, message: str) -> None:
        if r.worker is not worker:
            return
        r.worker = None
        r.memory_measured = 0
        r.last_error = message
        r.counters["crashes"] += 1
        r.expires_at = None
        self._set_state(r, "failed", error=message)

    # --- spare workers ----------------------------------------------------------------------
    #
    # A pool of started workers with llama_cpp imported. It is filled two ways: spawned ahead of
    # need (up to spare_workers, started the moment one is handed out) and recycled from models
    # that were evicted or unloaded (the worker drops its model: a swap then costs the load
    # alone, with no process start on the critical path however fast swaps follow each other).
    # An idle or requested unload still ends its worker: nothing is waiting for it.
    # Each spare counts against the memory budget at its resident size; spares beyond
    # spare_workers are closed after spare_idle_s, and any spare when a model needs the room.

    def _spare_rss(self, worker: Worker) -> int:
        return int(self.memory.process_bytes(worker.pid) or 0)

    def _pop_spare(self, model_path: str) -> Worker | None:
        while self._spares:
            sp = self._spares.pop()  # the most recent: its pages are the warmest
            if self._usable_spare(sp.worker, model_path):
                return sp.worker
        return None

    async def _take_worker(self, model_path: str) -> Worker:
        spare = self._pop_spare(model_path)
        if spare is not None:
            return spare
        if self._spare_starting and self._spare_task is not None and not self._spare_task.done():
            with contextlib.suppress(
                BaseException
            ):  # a refill still waiting to start is not waited for
                await asyncio.shield(self._spare_task)
            spare = self._pop_spare(model_path)
            if spare is not None:
                return spare
        return await self._spawn()

    async def _spawn(self) -> Worker:
        t0 = self.clock.monotonic()
        worker = await self.spawner.spawn()
        self._spawn_ms = (self.clock.monotonic() - t0) * 1000.0
        return worker

    def _usable_spare(self, spare: Worker | None, model_path: str) -> bool:
        """A live spare that can open the model (a jailed one sees what was known when it started)."""
        if spare is None or not spare.alive:
            return False
        if getattr(spare, "sees", lambda _p: True)(model_path):
            return True
        log.info(
            "the spare worker cannot see %s (started before it was known); starting a fresh one",
            model_path,
        )
        self._spawn_task(spare.close())
        return False

    async def _retire(self, worker: Worker) -> None:
        """A model's worker after its model is done with: recycle it into the pool, or close it."""
        cap = max(1, self.config.spare_workers) + 1
        if (
            not self.config.recycle_workers
            or self._stopping
            or not hasattr(worker, "unload")
            or getattr(worker, "recycled", 0) >= self.config.recycle_limit
            or len(self._spares) >= cap
        ):
            await worker.close()
            return
        try:
            rss = await worker.unload()
        except ApplianceError as exc:
            log.info("could not recycle worker %d (%s); closing it", worker.pid, exc)
            await worker.close(grace=0.5)
            return
        if self._stopping or not worker.alive:
            await worker.close(grace=0.5)
            return
        self._spares.append(_Spare(worker, int(rss), self.clock.monotonic()))
        self._wake.set()

    async def _close_spare(self, sp: _Spare, why: str) -> None:
        log.debug("closing spare worker %d (%s)", sp.worker.pid, why)
        with contextlib.suppress(Exception):
            await sp.worker.close(grace=1.0)

    def _spare_room(self) -> bool:
        """Whether one more spare fits the budget beside the resident models and the spares."""
        used = sum(o.memory_bytes for o in self.runners.values() if o.resident)
        spares = [sp.rss for sp in self._spares]
        expected = self._spare_size or 0
        return used + sum(spares) + expected <= self.memory.budget_bytes()

    def _refill_spares(self, delay: float = 0.0, after: Runner | None = None) -> None:
        """Start spares up to spare_workers in the background, after `delay` seconds and (with
        `after`) once that model's requests are answered, REFILL_WAIT_S at the most."""
        if (
            self._stopping
            or not self.config.spare_worker
            or self.config.spare_workers < 1
            or (self._spare_task is not None and not self._spare_task.done())
        ):
            return

        async def refill() -> None:
            if delay:
                await asyncio.sleep(delay)
            if after is not None:
                await _until_answered(after, REFILL_WAIT_S)
            while (
                not self._stopping
                and len([s for s in self._spares if s.worker.alive]) < self.config.spare_workers
            ):
                if not self._spare_room():
                    return
                self._spare_starting = True
                try:
                    spare = await self._spawn()
                except Exception as exc:
                    log.warning("could not start a spare worker: %s", exc)
                    return
                finally:
                    self._spare_starting = False
                if self._last_model_path is not None:
                    with contextlib.suppress(ApplianceError):
                        await spare.send(p.Prewarm(model_path=self._last_model_path))
                rss = self._spare_rss(spare)
                self._spare_size = max(self._spare_size or 0, rss) or None
                self._spares.insert(0, _Spare(spare, rss, self.clock.monotonic()))

        self._spare_task = asyncio.create_task(refill())

    def trim_spares(self) -> int:
        """Close dead spares and those beyond spare_workers idle for spare_idle_s; returns how many."""
        now = self.clock.monotonic()
        keep: list[_Spare] = []
        trimmed = 0
        newest_first = sorted(self._spares, key=lambda sp: sp.since, reverse=True)
        for n, sp in enumerate(newest_first):
            if not sp.worker.alive:
                trimmed += 1
                continue
            if n >= self.config.spare_workers and now - sp.since >= self.config.spare_idle_s:
                self._spawn_task(self._close_spare(sp, "idle"))
                trimmed += 1
                continue
            keep.append(sp)
        self._spares = sorted(keep, key=lambda sp: sp.since)
        return trimmed

    def _next_trim(self) -> float | None:
        if len(self._spares) <= self.config.spare_workers:
            return None
        oldest = min(sp.since for sp in self._spares)
        return oldest + self.config.spare_idle_s

    @property
    def spare_ready(self) -> bool:
        return any(sp.worker.alive for sp in self._spares)

    @property
    def spare_count(self) -> int:
        return sum(1 for sp in self._spares if sp.worker.alive)

    # --- explicit control --------------------------------------------------------------------

    async def load(self, model_id: str, *, keep_alive: float | None = None) -> None:
        r = self._runner(model_id)
        if keep_alive is not None:
            r.keep_alive = keep_alive
        if r.state not in ("ready", "busy"):
            await self._ensure_loaded(r)
        self._arm_idle(r)

    async def unload(self, model_id: str) -> str:
        """Unload now if idle; if requests are running, unload as soon as they end."""
        r = self._runner(model_id)
        if r.idle:
            await self._unload(r, "requested")
        elif r.state in ("busy", "loading") or r.waiting:
            r.unload_when_idle = True
        return r.state

    def forget(self, model_id: str) -> None:
        """Drop an unloaded model's runner (its profile was removed from the catalog)."""
        r = self.runners.get(model_id)
        if r is not None and r.worker is None and not (r.active or r.waiting):
            del self.runners[model_id]

    async def pin(self, model_id: str, pinned: bool = True) -> None:
        r = self._runner(model_id)
        r.pinned = pinned
        if pinned:
            r.expires_at = None
            await self.load(model_id)
        else:
            self._arm_idle(r)

    def _spawn_task(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- views -------------------------------------------------------------------------------

    def snapshot(self) -> list[ModelStatus]:
        out = []
        now_m, now_w = self.clock.monotonic(), self.clock.time()
        for prof in self.catalog.all():
            r = self.runners.get(prof.id) or Runner(
                profile=prof, slots=asyncio.Semaphore(prof.parallel), pinned=prof.pinned
            )
            deadline = None
            if r.expires_at is not None and r.idle:
                deadline = now_w + max(0.0, r.expires_at - now_m)
            out.append(
                ModelStatus(
                    id=prof.id,
                    kind=prof.kind,
                    state=r.state,
                    pinned=r.pinned,
                    memory_bytes=r.memory_bytes,
                    memory_estimate_bytes=r.memory_estimate,
                    last_used=r.last_used,
                    idle_deadline=deadline,
                    idle_ttl_s=self.idle_ttl(r),
                    load_count=r.load_count,
                    last_load_ms=r.last_load_ms,
                    last_error=r.last_error,
                    active=r.active,
                    waiting=r.waiting,
                    parallel=prof.parallel,
                    context_size=prof.context_size,
                    worker_pid=r.worker.pid if r.worker is not None else None,
                    source=prof.source,
                    counters=dict(r.counters),
                    swap_tier=self._tier_now(r),
                    swap_cost_ms=self._swap_costs(r),
                )
            )
        return out

    def _tier_now(self, r: Runner) -> str:
        if r.state in ("ready", "busy") and r.worker is not None:
            return "hot"
        path = r.model_path or (str(lp) if (lp := self.catalog.local_path(r.profile.id)) else None)
        if path is None:
            return "cold"
        tier = file_tier(path)
        return "cold" if tier == "unknown" else tier

    def _swap_costs(self, r: Runner) -> dict[str, float | None]:
        costs: dict[str, float | None] = {
            "hot": 0.0,
            "warm": r.load_ms_by_tier.get("warm"),
            "cold": r.load_ms_by_tier.get("cold"),
        }
        if not self.spare_ready:
            costs["spawn"] = self._spawn_ms
        return costs

    def stats(self) -> dict[str, Any]:
        return {
            "memory_kind": self.memory.kind,
            "memory_budget_bytes": self.memory.budget_bytes(),
            "memory_used_bytes": sum(r.memory_bytes for r in self.runners.values() if r.resident),
            "spare_worker_ready": self.spare_ready,
            "spare_workers": self.spare_count,
            "spare_memory_bytes": sum(sp.rss for sp in self._spares),
            "queue_depth": sum(r.waiting for r in self.runners.values()),
            "active_requests": sum(r.active for r in self.runners.values()),
        }


async def _until_answered(r: Runner, at_most_s: float) -> None:
    """Return when `r` has no request running or waiting, or after `at_most_s` (a real wait,
    whatever clock the scheduler is given)."""
    loop = asyncio.get_running_loop()
    until = loop.time() + at_most_s
    while (r.active or r.waiting) and loop.time() < until:
        await asyncio.sleep(0.005)


class _WaitForIdle(Exception):
    """Internal: the room a load needs is held by busy models; wait for one to go idle."""


@dataclass
class _Spare:
    worker: Worker
    rss: int
    """Resident bytes, counted against the memory budget."""
    since: float
    """Monotonic time it joined the pool."""


_PAGE = 4096


def file_tier(path: str, samples: int = 16) -> str:
    """Where a model file is: "warm" when the sampled pages are in the page cache, "cold" when
    some must come from disk, "unknown" where the kernel cannot tell (no RWF_NOWAIT)."""
    try:
        size = os.path.getsize(path)
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return "unknown"
    try:
        buf = bytearray(_PAGE)
        step = max(_PAGE, (size // samples) // _PAGE * _PAGE)
        for off in range(0, max(1, size - _PAGE), step):
            try:
                os.preadv(fd, [buf], off, os.RWF_NOWAIT)
            except BlockingIOError:
                return "cold"
        return "warm"
    except (OSError, AttributeError):
        return "unknown"
    finally:
        os.close(fd)


def _keep_in_page_cache(path: str) -> None:
    """Ask the kernel to keep (or bring back) the model file in the page cache."""
    try:
        import psutil

        size = os.path.getsize(path)
        if size > psutil.virtual_memory().available // 2:
            return
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
        finally:
            os.close(fd)
    except OSError:
        pass
