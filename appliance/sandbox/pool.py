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
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from appliance.errors import ToolchainMissing
from appliance.sandbox.engine import SandboxEngine
from appliance.sandbox.limits import SandboxLimits
from appliance.sandbox.profiles import ResolvedLanguage
from appliance.sandbox.repl import DriverSandbox

log = logging.getLogger("appliance.sandbox")

RETRY_S = 5.0


class WarmPool:
    def __init__(
        self,
        engine: SandboxEngine,
        sizes: dict[str, int],
        *,
        max_cpu_s: float,
        on_error: Callable[[str, Exception], None] | None = None,
    ) -> None:
        self.engine = engine
        self.sizes = {engine.catalog.canonical(k): v for k, v in sizes.items() if v > 0}
        self.max_cpu_s = max_cpu_s
        self._idle: dict[str, list[DriverSandbox]] = {k: [] for k in self.sizes}
        self._wake: dict[str, asyncio.Event] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._errors: dict[str, str] = {}
        self._on_error = on_error
        self.served = 0
        self.missed = 0

    def prestart_limits(self, lang: ResolvedLanguage) -> SandboxLimits:
        return replace(lang.limits, cpu_s=self.max_cpu_s)

    async def start(self) -> None:
        for name in self.sizes:
            self._wake[name] = asyncio.Event()
            self._tasks.append(asyncio.create_task(self._fill(name), name=f"sandbox-pool-{name}"))

    async def _fill(self, name: str) -> None:
        wake = self._wake[name]
        while True:
            idle = self._idle[name]
            idle[:] = [sb for sb in idle if sb.alive]
            if len(idle) >= self.sizes[name]:
                wake.clear()
                await wake.wait()
                continue
            try:
                lang = await asyncio.to_thread(self.engine.catalog.resolve, name)
                idle.append(await self.engine.start_driver(lang, self.prestart_limits(lang)))
                self._errors.pop(name, None)
            except ToolchainMissing as exc:
                self._errors[name] = exc.message
                log.warning("no warm pool for %s: %s", name, exc.message)
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._errors[name] = str(exc)
                log.warning("warm pool for %s could not start a sandbox: %s", name, exc)
                if self._on_error:
                    self._on_error(name, exc)
                await asyncio.sleep(RETRY_S)

    def take(self, lang: ResolvedLanguage, limits: SandboxLimits) -> DriverSandbox | None:
        """A ready sandbox for `lang` that can run under `limits`, or None (start one yourself)."""
        idle = self._idle.get(lang.name)
        if idle is None:
            return None
        for i, sb in enumerate(idle):
            if sb.alive and sb.serves(limits):
                del idle[i]
                self.served += 1
                self._wake[lang.name].set()
                return sb
        self.missed += 1
        self._wake[lang.name].set()
        return None

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
