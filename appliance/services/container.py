"""The Appliance: every long-lived part of the daemon, built once from the config.

`Appliance.from_config` wires the real implementations (worker processes, NVML or RAM probe,
bwrap); tests build the same object with their own parts. `start` and `stop` are called by the
HTTP server's lifespan, and by tests that drive services directly.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from appliance import __version__
from appliance.config import Config
from appliance.models.catalog import ModelCatalog
from appliance.models.grammars import GrammarCompiler, GrammarProver, GrammarSettings
from appliance.models.memory import memory_probe_for_host
from appliance.models.registration import RegistrationPolicy
from appliance.models.scheduler import ModelScheduler
from appliance.models.workerproc import ProcessSpawner
from appliance.services.access import ApiAccess
from appliance.services.agents import AgentService
from appliance.services.chat import ChatService
from appliance.services.models import ModelService
from appliance.services.operations import Operations
from appliance.services.responses import ResponseService
from appliance.services.sandboxes import SandboxService
from appliance.services.sessions import SessionService
from appliance.services.worker_jail import worker_jail_for
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
        grammars: GrammarCompiler | None = None,
    ) -> None:
        self.config = config
        self.catalog = catalog
        self.scheduler = scheduler
        self.store = store
        self.events = events
        self.telemetry = telemetry or Telemetry(events)
        self.operations = Operations(config, store=store, scheduler=scheduler, telemetry=self.telemetry)
        self.access = ApiAccess(store.tokens, host=config.server.host)
        self.models = ModelService(catalog, scheduler, RegistrationPolicy.for_config(config))
        self.grammars = grammars or GrammarCompiler(GrammarProver(GrammarSettings.from_config(config.models)))
        self.chat = ChatService(scheduler, catalog, telemetry=self.telemetry, grammars=self.grammars)
        self._extra_stops: list[Any] = []
        self.sandboxes = sandboxes if sandboxes is not None else SandboxService.from_config(config, self.telemetry)
        self.on_stop(self.sandboxes.stop)
        self.sessions = SessionService(config, store=store, chat=self.chat, scheduler=scheduler,
                                       catalog=catalog, sandboxes=self.sandboxes, events=events,
                                       telemetry=self.telemetry)
        self.agents = AgentService(config, store=store, catalog=catalog, tools=self.sessions.tools,
                                   sandboxes=self.sandboxes, cleanup=self.sessions.cleanup)
        self.responses = ResponseService(store, catalog, self.chat, self.sessions)
        self.on_stop(self.sessions.stop)  # runs before the sandboxes stop: hot sessions are parked

    @classmethod
    def from_config(cls, config: Config) -> Appliance:
        state = Path(config.state_dir)
        for sub in ("models", "kv", "sandboxes", "oci"):
            (state / sub).mkdir(parents=True, exist_ok=True)
        catalog = ModelCatalog.load(config)
        events = EventBus()
        jail = worker_jail_for(config, catalog)
        scheduler = ModelScheduler(
            catalog,
            spawner=ProcessSpawner(log_dir=state / "logs", jail=jail),
            memory=memory_probe_for_host(config.models),
            config=config.models,
            events=events,
        )
        store = Store(state)
        grammars = GrammarCompiler(GrammarProver(GrammarSettings.from_config(config.models), jail=jail))
        return cls(config, scheduler=scheduler, catalog=catalog, store=store, events=events,
                   telemetry=Telemetry(events, nvml=Nvml.open()), grammars=grammars)

    async def start(self) -> None:
        await self.operations.start()
        await self.scheduler.start()
        await self.sandboxes.start()
        await self.agents.sync_profiles()
        await self.sessions.start()
        log.info("appliance %s started (pid %d, state %s)", __version__, os.getpid(), self.config.state_dir)

    async def stop(self) -> None:
        for stop in reversed(self._extra_stops):
            try:
                await stop()
            except Exception:  # one part failing to stop must not keep the others running
                log.exception("error while stopping")
        await self.scheduler.stop()
        await self.grammars.close()
        await self.operations.stop()
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


