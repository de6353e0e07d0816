"""The Appliance: every long-lived part of the daemon, built once from the config.

`Appliance.from_config` wires the real implementations (worker processes, NVML or RAM probe,
bwrap); tests build the same object with their own parts. `start` and `stop` are called by the
HTTP server's lifespan, and by tests that drive services directly.

Start-up either completes or undoes itself: the parts start in order, and when one fails (or the
start is cancelled) the ones already started, the failing one included, are stopped newest
first before the error goes on. `stop` runs the same list, so it is safe to call again.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from appliance import __version__
from appliance.access import ApiAccess
from appliance.config import STATE_DIR_ENV, Config
from appliance.host.janitor import Janitor
from appliance.host.worker_jail import worker_jail_for
from appliance.models.catalog import ModelCatalog
from appliance.models.grammars import GrammarCompiler, GrammarProver, GrammarSettings
from appliance.models.hub import ModelHub
from appliance.models.memory import memory_probe_for_host
from appliance.models.registration import RegistrationPolicy
from appliance.models.scheduler import ModelScheduler
from appliance.models.service import ModelService
from appliance.models.worker.process import ProcessSpawner
from appliance.openai.chat import ChatService
from appliance.operations import Operations
from appliance.private import private_dir
from appliance.sandbox.service import SandboxService
from appliance.sessions.agents import AgentService
from appliance.sessions.parking import KvParking
from appliance.sessions.responses import ResponseService
from appliance.sessions.service import SessionService
from appliance.store import Store
from appliance.telemetry.events import EventBus
from appliance.telemetry.nvml import Nvml
from appliance.telemetry.recorder import Telemetry

log = logging.getLogger("appliance")


class Appliance:
    def __init__(
        self,
        config: Config,
        *,
        scheduler: ModelScheduler,
        catalog: ModelCatalog,
        store: Store,
        events: EventBus,
        telemetry: Telemetry | None = None,
        sandboxes: SandboxService | None = None,
        janitor: Janitor | None = None,
        grammars: GrammarCompiler | None = None,
    ) -> None:
        self.config = config
        self.janitor = janitor
        self.catalog = catalog
        self.scheduler = scheduler
        self.store = store
        self.events = events
        self.telemetry = telemetry or Telemetry(events)
        self.operations = Operations(
            config, store=store, scheduler=scheduler, telemetry=self.telemetry
        )
        self.access = ApiAccess(store.tokens, host=config.server.host)
        policy = RegistrationPolicy.for_config(config)
        self.models = ModelService(catalog, scheduler, policy)
        self.hub = ModelHub(catalog, scheduler, publish=events.publish, policy=policy)
        """Pulls, imports and removals of models (appliance.models.hub)."""
        self.grammars = grammars or GrammarCompiler(
            GrammarProver(GrammarSettings.from_config(config.models))
        )
        self.kv = KvParking(
            store,
            scheduler,
            catalog,
            kv_dir=Path(config.state_dir) / "kv",
            budget_bytes=config.agents.kv_disk_budget_mb * 2**20,
            idle_s=config.agents.park_idle_s,
            events=events,
        )
        """Sessions' KV state and status: one owner, given to every service that needs it."""
        self.chat = ChatService(
            scheduler,
            catalog,
            telemetry=self.telemetry,
            grammars=self.grammars,
            slot_keeper=self.kv,  # a plain request that takes a session's slot parks it first
        )
        self._extra_stops: list[Any] = []
        self._started: list[Callable[[], Awaitable[None]]] = []
        """The stops of the parts started so far, in start order."""
        self.sandboxes = (
            sandboxes
            if sandboxes is not None
            else SandboxService.from_config(config, self.telemetry)
        )
        self.sessions = SessionService(
            config,
            store=store,
            chat=self.chat,
            scheduler=scheduler,
            catalog=catalog,
            sandboxes=self.sandboxes,
            kv=self.kv,
            telemetry=self.telemetry,
        )
        self.agents = AgentService(
            config,
            store=store,
            catalog=catalog,
            tools=self.sessions.tools,
            sandboxes=self.sandboxes,
            cleanup=self.sessions.cleanup,
        )
        self.responses = ResponseService(store, catalog, self.chat, self.sessions, self.kv)

    @classmethod
    def from_config(cls, config: Config) -> Appliance:
        state = private_dir(Path(config.state_dir))  # 0700: transcripts, KV state, workspaces
        for sub in ("models", "kv", "sandboxes", "oci"):
            private_dir(state / sub)
        catalog = ModelCatalog.load(config)
        events = EventBus()
        jail = worker_jail_for(config, catalog)
        scheduler = ModelScheduler(
            catalog,
            spawner=ProcessSpawner(
                env={STATE_DIR_ENV: str(state.resolve())},
                answer_timeout=config.models.worker_timeout_s or None,
                jail=jail,
            ),
            memory=memory_probe_for_host(config.models),
            config=config.models,
            events=events,
            kv_ram_budget=config.agents.kv_ram_budget_mb * 2**20,
        )
        store = Store(state)
        grammars = GrammarCompiler(
            GrammarProver(
                GrammarSettings.from_config(config.models),
                jail=jail,
                env={STATE_DIR_ENV: str(state.resolve())},
            )
        )
        return cls(
            config,
            scheduler=scheduler,
            catalog=catalog,
            store=store,
            events=events,
            telemetry=Telemetry(events, nvml=Nvml.open()),
            janitor=Janitor(state.resolve()),
            grammars=grammars,
        )

    def _parts(
        self,
    ) -> list[tuple[Callable[[], Awaitable[Any]], Callable[[], Awaitable[None]] | None]]:
        """(start, stop) of each part, in start order; stop runs them the other way round."""
        janitor = [(self.janitor.start, self.janitor.stop)] if self.janitor is not None else []
        return [
            *janitor,  # first: it removes what an earlier daemon left, and outlives the others
            (self.operations.start, self.operations.stop),
            (self.scheduler.start, self.scheduler.stop),
            (self.sandboxes.start, self.sandboxes.stop),
            (self.agents.sync_profiles, None),
            (self.kv.start, self.kv.stop),  # stops after the turns: their sessions are parked
            (self._no_start, self.hub.stop),  # running pulls are cancelled, partials kept
            (self._no_start, self.sessions.stop),  # stops first: running turns are cancelled
        ]

    async def _no_start(self) -> None:
        """The session service has nothing to start; it is listed for its stop."""

    async def start(self) -> None:
        """Start every part; on any failure, stop the started ones (newest first), then raise."""
        try:
            for start, stop in self._parts():
                if stop is not None:
                    self._started.append(stop)  # before start: a half-started part is stopped too
                await start()
        except BaseException as exc:
            log.error(
                "start-up failed; stopping what had started",
                extra={"fields": {"error": getattr(exc, "message", None) or repr(exc)}},
            )
            await self.stop()
            raise
        log.info(
            "appliance %s started (pid %d, state %s)",
            __version__,
            os.getpid(),
            self.config.state_dir,
        )

    async def stop(self) -> None:
        """Stop what started, newest first; a second call (or one before start) only closes the store."""
        extra, self._extra_stops = self._extra_stops, []
        started, self._started = self._started, []
        for stop in [*reversed(extra), *reversed(started)]:
            try:
                await stop()
            except Exception:  # one part failing to stop must not keep the others running
                log.exception("error while stopping")
        await self.grammars.close()
        await self.store.aclose()

    async def status(self) -> dict[str, Any]:
        return {
            "version": __version__,
            "pid": os.getpid(),
            "state_dir": self.config.state_dir,
            "models": [m.to_dict() for m in self.scheduler.snapshot()],
            "scheduler": self.scheduler.stats(),
            "sandboxes": self.sandboxes.stats(),
            "sessions": self.sessions.stats(),
        }

    def on_stop(self, fn: Any) -> None:
        """Register an async callable to run at stop (in reverse order of registration)."""
        self._extra_stops.append(fn)
