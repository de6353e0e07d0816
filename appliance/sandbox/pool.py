"""The warm pool: per language, a few sandboxes whose interpreter has started and waits.

Taking one costs no process or interpreter start-up: the caller writes its code into the
sandbox's workspace and sends one frame. A pooled sandbox serves exactly one owner (a one-shot
run or a stateful sandbox) and is destroyed after. Each sandbox taken starts its replacement at
once, in the background; a caller that finds the pool empty while replacements are starting
waits for one of them (never slower than starting its own), unless every starting one is
already promised to an earlier caller, in which case it starts its own.

Pooled sandboxes start with the language's default limits and the daemon's longest timeout as
their CPU budget; the taker lowers both to what its request asked. A request above the defaults
(more memory, say) is served by a fresh sandbox instead, because a running process's hard limits
can only go down.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field, replace
from typing import Any

from appliance.errors import ToolchainMissing
from appliance.sandbox.engine import SandboxEngine
from appliance.sandbox.limits import SandboxLimits
from appliance.sandbox.profiles import ResolvedLanguage
from appliance.sandbox.repl import DriverSandbox, fits

log = logging.getLogger("appliance.sandbox")

RETRY_S = 5.0
REFILL_DELAY_S = 0.025
"""A replacement starts this long after its sandbox was taken: by then the run it replaces has
usually finished, so the two do not compete for the CPU (a pooled run takes a few ms; starting an
interpreter takes tens)."""


@dataclass
class _LanguagePool:
    lang: ResolvedLanguage
    size: int
    limits: SandboxLimits
    idle: list[DriverSandbox] = field(default_factory=list)
    starting: int = 0
    waiting: int = 0
    arrived: asyncio.Condition = field(default_factory=asyncio.Condition)
    error: str | None = None
    retry_at: float = 0.0


class WarmPool:
    def __init__(self, engine: SandboxEngine, sizes: dict[str, int], *, max_cpu_s: float) -> None:
        self.engine = engine
        self.sizes = {engine.catalog.canonical(k): v for k, v in sizes.items() if v > 0}
        self.max_cpu_s = max_cpu_s
        self._pools: dict[str, _LanguagePool] = {}
        self._errors: dict[str, str] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopping = False
        self.served = 0
        self.missed = 0

    def prestart_limits(self, lang: ResolvedLanguage) -> SandboxLimits:
        return replace(lang.limits, cpu_s=self.max_cpu_s)

    async def start(self) -> None:
        for name, size in self.sizes.items():
            try:
                lang = await asyncio.to_thread(self.engine.catalog.resolve, name)
            except ToolchainMissing as exc:
                self._errors[name] = exc.message
                log.warning("no warm pool for %s: %s", name, exc.message)
                continue
            self._pools[name] = _LanguagePool(lang, size, self.prestart_limits(lang))
            self._top_up(self._pools[name])

    def _top_up(self, pool: _LanguagePool, delay: float = 0.0) -> None:
        """Start as many sandboxes as the pool is short of."""
        if self._stopping or asyncio.get_running_loop().time() < pool.retry_at:
            return
        for dead in [sb for sb in pool.idle if not sb.alive]:
            pool.idle.remove(dead)  # killed from outside (the OOM killer, an operator)
            self._track(asyncio.create_task(dead.destroy()))
        for _ in range(pool.size - len(pool.idle) - pool.starting):
            pool.starting += 1
            name = f"sandbox-pool-{pool.lang.name}"
            self._track(asyncio.create_task(self._start_one(pool, delay), name=name))

    def _track(self, task: asyncio.Task[None]) -> None:
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _start_one(self, pool: _LanguagePool, delay: float) -> None:
        sandbox: DriverSandbox | None = None
        try:
            if delay:
                await asyncio.sleep(delay)
            sandbox = await self.engine.start_driver(pool.lang, pool.limits)
            pool.error = None
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            pool.error = str(exc)
            pool.retry_at = asyncio.get_running_loop().time() + RETRY_S
            log.warning("warm pool for %s could not start a sandbox: %s", pool.lang.name, exc)
        finally:
            pool.starting -= 1
        if sandbox is not None:
            if self._stopping:
                await sandbox.destroy()
                return
            pool.idle.append(sandbox)
        async with pool.arrived:
            pool.arrived.notify_all()
        if sandbox is None:
            await asyncio.sleep(RETRY_S)
            self._top_up(pool)

    def _take_idle(self, pool: _LanguagePool, limits: SandboxLimits) -> DriverSandbox | None:
        for i, sb in enumerate(pool.idle):
            if sb.alive and sb.serves(limits):
                del pool.idle[i]
                self._top_up(pool, REFILL_DELAY_S)
                return sb
        if any(not sb.alive for sb in pool.idle):
            self._top_up(pool)
        return None

    async def acquire(
        self, lang: ResolvedLanguage, limits: SandboxLimits, *, wait_s: float = 2.0
    ) -> DriverSandbox | None:
        """A ready sandbox for `lang` that can run under `limits`, or None (start one yourself)."""
        pool = self._pools.get(lang.name)
        if pool is None or not fits(limits, pool.limits):
            return None
        sandbox = self._take_idle(pool, limits)
        if sandbox is None and pool.waiting < pool.starting:
            pool.waiting += 1
            try:
                deadline = asyncio.get_running_loop().time() + wait_s
                async with pool.arrived:
                    while sandbox is None and (pool.starting or pool.idle):
                        remaining = deadline - asyncio.get_running_loop().time()
                        if remaining <= 0:
                            break
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(pool.arrived.wait(), remaining)
                        sandbox = self._take_idle(pool, limits)
            finally:
                pool.waiting -= 1
        if sandbox is None:
            self.missed += 1
        else:
            self.served += 1
        return sandbox

    async def stop(self) -> None:
        self._stopping = True
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        sandboxes = [sb for pool in self._pools.values() for sb in pool.idle]
        for pool in self._pools.values():
            pool.idle.clear()
        await asyncio.gather(*(sb.destroy() for sb in sandboxes), return_exceptions=True)

    def stats(self) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for name, size in self.sizes.items():
            pool = self._pools.get(name)
            out[name] = {
                "target": size,
                "ready": sum(1 for sb in pool.idle if sb.alive) if pool else 0,
                "starting": pool.starting if pool else 0,
                "error": (pool.error if pool else None) or self._errors.get(name),
            }
        out["_totals"] = {"served": self.served, "missed": self.missed}
        return out
