"""The warm pool: per language, a few sandboxes whose interpreter has started and waits.

Taking one costs no process or interpreter start-up: the caller writes its code into the
sandbox's workspace and sends one frame. A pooled sandbox serves exactly one owner (a one-shot
run or a stateful sandbox) and is destroyed after; the pool refills in the background, one
sandbox at a time per language, so refills never crowd out the runs they are for.

Pooled sandboxes start with the language's default limits and the daemon's longest timeout as
their CPU budget; the taker lowers both to what its request asked. A request above the defaults
(more memory, say) is served by a fresh sandbox instead, because a running process's hard limits
can only go down.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import replace
from typing import Any

from appliance.errors import ToolchainMissing
from appliance.sandbox.engine import SandboxEngine
from appliance.sandbox.limits import SandboxLimits
from appliance.sandbox.profiles import ResolvedLanguage
from appliance.sandbox.repl import DriverSandbox, fits

log = logging.getLogger("appliance.sandbox")

RETRY_S = 5.0


class WarmPool:
    def __init__(
        self,
        engine: SandboxEngine,
        sizes: dict[str, int],
        *,
        max_cpu_s: float,
    ) -> None:
        self.engine = engine
        self.sizes = {engine.catalog.canonical(k): v for k, v in sizes.items() if v > 0}
        self.max_cpu_s = max_cpu_s
        self._idle: dict[str, list[DriverSandbox]] = {k: [] for k in self.sizes}
        self._wake: dict[str, asyncio.Event] = {}
        self._arrived: dict[str, asyncio.Condition] = {}
        self._filling: set[str] = set()
        self._tasks: list[asyncio.Task[None]] = []
        self._errors: dict[str, str] = {}
        self.served = 0
        self.missed = 0

    def prestart_limits(self, lang: ResolvedLanguage) -> SandboxLimits:
        return replace(lang.limits, cpu_s=self.max_cpu_s)

    async def start(self) -> None:
        for name in self.sizes:
            self._wake[name] = asyncio.Event()
            self._arrived[name] = asyncio.Condition()
            self._tasks.append(asyncio.create_task(self._fill(name), name=f"sandbox-pool-{name}"))

    async def _fill(self, name: str) -> None:
        wake = self._wake[name]
        try:
            lang = await asyncio.to_thread(self.engine.catalog.resolve, name)
        except ToolchainMissing as exc:
            self._errors[name] = exc.message
            log.warning("no warm pool for %s: %s", name, exc.message)
            return
        limits = self.prestart_limits(lang)
        while True:
            idle = self._idle[name]
            idle[:] = [sb for sb in idle if sb.alive]
            deficit = self.sizes[name] - len(idle)
            if deficit <= 0:
                wake.clear()
                await wake.wait()
                continue
            self._filling.add(name)
            try:
                started = await asyncio.gather(
                    *(self.engine.start_driver(lang, limits) for _ in range(deficit)),
                    return_exceptions=True,
                )
            finally:
                self._filling.discard(name)
            failures = [r for r in started if isinstance(r, BaseException)]
            idle.extend(r for r in started if isinstance(r, DriverSandbox))
            async with self._arrived[name]:
                self._arrived[name].notify_all()
            for failure in failures:
                if isinstance(failure, asyncio.CancelledError):
                    raise failure
            if failures:
                self._errors[name] = str(failures[0])
                log.warning("warm pool for %s could not start a sandbox: %s", name, failures[0])
                await asyncio.sleep(RETRY_S)
            else:
                self._errors.pop(name, None)

    def _take_idle(self, lang: ResolvedLanguage, limits: SandboxLimits) -> DriverSandbox | None:
        idle = self._idle.get(lang.name)
        if idle is None:
            return None
        for i, sb in enumerate(idle):
            if sb.alive and sb.serves(limits):
                del idle[i]
                self._wake[lang.name].set()
                return sb
        return None

    async def acquire(
        self, lang: ResolvedLanguage, limits: SandboxLimits, *, wait_s: float = 1.0
    ) -> DriverSandbox | None:
        """A ready sandbox for `lang` that can run under `limits`, or None (start one yourself).

        When none is idle but the pool is starting some, wait up to `wait_s` for one: that is
        never slower than starting a sandbox from scratch.
        """
        name = lang.name
        sandbox = self._take_idle(lang, limits)
        if sandbox is None and name in self._filling and fits(limits, self.prestart_limits(lang)):
            self._wake[name].set()
            cond = self._arrived[name]
            deadline = asyncio.get_running_loop().time() + wait_s
            async with cond:
                while sandbox is None and name in self._filling:
                    remaining = deadline - asyncio.get_running_loop().time()
                    if remaining <= 0:
                        break
                    try:
                        await asyncio.wait_for(cond.wait(), remaining)
                    except TimeoutError:
                        break
                    sandbox = self._take_idle(lang, limits)
        if sandbox is None:
            self.missed += 1
            if name in self._wake:
                self._wake[name].set()
        else:
            self.served += 1
        return sandbox

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        sandboxes = [sb for idle in self._idle.values() for sb in idle]
        for idle in self._idle.values():
            idle.clear()
        await asyncio.gather(*(sb.destroy() for sb in sandboxes), return_exceptions=True)

    def stats(self) -> dict[str, dict[str, Any]]:
        return {
            name: {
                "target": size,
                "ready": sum(1 for sb in self._idle.get(name, []) if sb.alive),
                "error": self._errors.get(name),
            }
            for name, size in self.sizes.items()
        } | {"_totals": {"served": self.served, "missed": self.missed}}
