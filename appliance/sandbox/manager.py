"""Stateful sandboxes: a workspace that lives across execs, and for Python and Node.js a live
interpreter whose variables and imports persist from one cell to the next.

A sandbox comes from the warm pool when one fits (so creating it is immediate), serves one owner,
and is destroyed by DELETE or when it has been idle longer than its TTL. Cells of one sandbox
run one at a time (a second exec while one runs gets 409). Languages without a REPL driver
compile and run each exec in a fresh process over the same workspace, so files persist but
memory does not. If a REPL interpreter dies (out of memory, a crash, a timeout it ignored), the
next exec starts a fresh one on the same workspace and says so.

Each sandbox is admitted (admission.py) for its owner before anything starts, and holds its
memory reservation and its place in the count until it is deleted or reaped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from dataclasses import dataclass, field

from appliance.sandbox.admission import Owner, Reservation, SandboxAdmission, footprint_mb
from appliance.sandbox.engine import SandboxEngine
from appliance.sandbox.errors import SandboxBusy, SandboxNotFound
from appliance.sandbox.limits import SandboxLimits
from appliance.sandbox.oneshot import RunSpec, compile_and_run
from appliance.sandbox.pool import WarmPool
from appliance.sandbox.profiles import ResolvedLanguage
from appliance.sandbox.repl import DriverSandbox
from appliance.sandbox.results import RunOutcome
from appliance.sandbox.workspace import Workspace

log = logging.getLogger("appliance.sandbox")


@dataclass
class StatefulSandbox:
    id: str
    language: ResolvedLanguage
    limits: SandboxLimits
    network: bool
    workspace: Workspace
    driver: DriverSandbox | None
    created_at: float = field(default_factory=time.time)
    last_used: float = field(default_factory=time.monotonic)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    execs: int = 0
    running: asyncio.Task[object] | None = None
    deleted: bool = False
    reservation: Reservation | None = None

    @property
    def busy(self) -> bool:
        return self.lock.locked()

    def idle_for(self) -> float:
        return time.monotonic() - self.last_used


class SandboxManager:
    def __init__(
        self,
        engine: SandboxEngine,
        pool: WarmPool | None,
        *,
        idle_ttl_s: float,
        admission: SandboxAdmission,
    ) -> None:
        self.engine = engine
        self.pool = pool
        self.idle_ttl_s = idle_ttl_s
        self.admission = admission
        self.sandboxes: dict[str, StatefulSandbox] = {}
        self._reaper: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._reaper = asyncio.create_task(self._reap_loop(), name="sandbox-reaper")

    async def _reap_loop(self) -> None:
        interval = max(0.5, min(30.0, self.idle_ttl_s / 4))
        while True:
            await asyncio.sleep(interval)
            await self.reap_idle()

    async def reap_idle(self) -> list[str]:
        """Destroy sandboxes idle longer than the TTL; returns their ids."""
        expired = [
            sb.id
            for sb in self.sandboxes.values()
            if not sb.busy and sb.idle_for() > self.idle_ttl_s
        ]
        for sid in expired:
            log.info("reaping idle sandbox %s", sid)
            with contextlib.suppress(SandboxNotFound):
                await self.delete(sid)
        return expired

    async def create(
        self,
        lang: ResolvedLanguage,
        limits: SandboxLimits,
        *,
        network: bool,
        owner: Owner = "client",
    ) -> StatefulSandbox:
        need = footprint_mb(
            limits,
            workspace_in_ram=self.engine.workspaces_in_ram,
            compile_limits=None if lang.profile.repl else lang.compile_limits,
        )
        reservation = self.admission.admit(need, owner, stateful=True)
        try:
            sid = f"sbx-{secrets.token_hex(8)}"
            driver: DriverSandbox | None = None
            if lang.profile.repl:
                if not network and self.pool is not None and lang.image is None:
                    driver = await self.pool.acquire(lang, limits)
                if driver is None:
                    ws = await asyncio.to_thread(self.engine.new_workspace, "sbx-", limits)
                    driver = await self.engine.start_driver(
                        lang, limits, workspace=ws, network=network
                    )
                await driver.enter_repl()
                workspace = driver.workspace
            else:
                workspace = await asyncio.to_thread(self.engine.new_workspace, "sbx-", limits)
        except BaseException:
            self.admission.release(reservation)
            raise
        sandbox = StatefulSandbox(sid, lang, limits, network, workspace, driver)
        sandbox.reservation = reservation
        self.sandboxes[sid] = sandbox
        return sandbox

    def get(self, sid: str) -> StatefulSandbox:
        try:
            sandbox = self.sandboxes[sid]
        except KeyError:
            raise SandboxNotFound(
                f"no sandbox {sid!r}; it was deleted or reaped after {self.idle_ttl_s:g}s idle. "
                "Create one with POST /api/sandboxes"
            ) from None
        sandbox.last_used = time.monotonic()
        return sandbox

    async def exec(
        self,
        sid: str,
        code: str,
        *,
        limits: SandboxLimits,
        stdin: bytes = b"",
        args: list[str] | None = None,
    ) -> tuple[RunOutcome, bool]:
        """Run a cell; (outcome, whether the interpreter had to be restarted first)."""
        sandbox = self.get(sid)
        if sandbox.busy:
            raise SandboxBusy(f"sandbox {sid} is running a cell; wait for it to finish")
        async with sandbox.lock:
            sandbox.execs += 1
            sandbox.running = asyncio.current_task()
            try:
                if sandbox.driver is None:
                    spec = RunSpec(
                        sandbox.language,
                        code.encode(),
                        limits,
                        stdin=stdin,
                        args=args or [],
                        network=sandbox.network,
                    )
                    await asyncio.to_thread(
                        sandbox.workspace.write_file, sandbox.language.profile.file, spec.code
                    )
                    return await compile_and_run(
                        self.engine, sandbox.language, sandbox.workspace, spec, time.monotonic()
                    ), False
                restarted = False
                if not sandbox.driver.alive:
                    await sandbox.driver.destroy(keep_workspace=True)
                    sandbox.driver = await self.engine.start_driver(
                        sandbox.language,
                        sandbox.limits,
                        workspace=sandbox.workspace,
                        network=sandbox.network,
                    )
                    await sandbox.driver.enter_repl()
                    restarted = True
                return await sandbox.driver.exec_cell(code, limits), restarted
            except asyncio.CancelledError:
                if sandbox.deleted:
                    raise SandboxNotFound(f"sandbox {sid} was deleted while the cell ran") from None
                raise
            finally:
                sandbox.running = None
                sandbox.last_used = time.monotonic()

    async def delete(self, sid: str) -> None:
        sandbox = self.sandboxes.pop(sid, None)
        if sandbox is None:
            raise SandboxNotFound(f"no sandbox {sid!r}; it was already deleted or reaped")
        sandbox.deleted = True
        try:
            if sandbox.driver is not None:
                await sandbox.driver.destroy(keep_workspace=True)
            if sandbox.running is not None and not sandbox.running.done():
                sandbox.running.cancel()  # a compiled-language exec: killed on the way out
                with contextlib.suppress(BaseException):
                    await asyncio.wait({sandbox.running}, timeout=10)
            await asyncio.to_thread(sandbox.workspace.destroy)
        finally:  # its memory is free once its processes and its workspace are gone
            if sandbox.reservation is not None:
                self.admission.release(sandbox.reservation)
                sandbox.reservation = None

    async def stop(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
        for sid in list(self.sandboxes):
            with contextlib.suppress(Exception):
                await self.delete(sid)
