"""AgentService: agents as the API offers them, and the agent profiles applied at start-up.

The store keeps agents (appliance.store.agents); this service adds the checks that need the rest of
the appliance: the model exists and is a chat model, the tools are ones the appliance offers, the
sandbox language is known. A profile file is applied even when its model is not available yet
(the box may fetch it later): such problems are logged at start-up and reported when a session
of that agent sends a turn.

Deleting an agent together with its sessions hands their KV files and sandboxes to the session
service's cleanup.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

from msgspec import UNSET

from appliance.config import Config
from appliance.errors import ApplianceError, InvalidRequest
from appliance.models.catalog import ModelCatalog
from appliance.sandbox.service import SandboxService
from appliance.sessions.tools import AgentTools, ToolBox
from appliance.store import Agent, AgentPatch, AgentSpec, Page, SessionCleanup, Store
from appliance.store.agent_profiles import (
    agent_profile_dirs,
    load_agent_profiles,
    sync_agent_profiles,
)
from appliance.store.mcp_servers import validate_mcp_servers

log = logging.getLogger("appliance.agents")


class AgentService:
    def __init__(
        self,
        config: Config,
        *,
        store: Store,
        catalog: ModelCatalog,
        tools: ToolBox,
        sandboxes: SandboxService,
        cleanup: Callable[[SessionCleanup], Awaitable[None]],
    ) -> None:
        self.config = config
        self.store = store
        self.catalog = catalog
        self.tools = tools
        self.sandboxes = sandboxes
        self._cleanup = cleanup

    async def sync_profiles(self) -> list[Agent]:
        """Upsert the agents of every profile directory; ConfigError names a bad file and key."""
        profiles = await asyncio.to_thread(load_agent_profiles, agent_profile_dirs(self.config))
        agents = await self.store.run(
            sync_agent_profiles, self.store.agents, list(profiles.values())
        )
        for agent in agents:
            try:
                self.check(agent.spec())
            except ApplianceError as exc:
                log.warning(
                    "agent %r (%s) cannot run yet: %s", agent.name, agent.source_path, exc.message
                )
        return agents

    def check(self, spec: AgentSpec) -> None:
        """What the store cannot check: the model, the tools, the sandbox language, and that no
        MCP server is shown the appliance's own state or configuration."""
        self._check_model(spec.model)
        self._check_mcp_paths(spec)
        self.tools.require(spec.tools)
        if spec.sandbox is not None:
            self.sandboxes.catalog.canonical(spec.sandbox)

    def _check_mcp_paths(self, spec: AgentSpec) -> None:
        # the entries' own checks first (NUL bytes, relative paths...): a path is resolved below
        validate_mcp_servers(spec.mcp_servers)
        own = [Path(d).resolve() for d in (self.config.state_dir, self.config.config_dir) if d]
        for i, server in enumerate(spec.mcp_servers):
            for p in server.paths:
                try:
                    path = Path(p).resolve()
                except (OSError, RuntimeError, ValueError) as exc:  # a symlink loop, say
                    raise InvalidRequest(
                        f"mcp_servers[{i}].paths: {p!r} cannot be resolved ({exc})",
                        param=f"mcp_servers[{i}].paths",
                    ) from None
                if any(path == d or d in path.parents or path in d.parents for d in own):
                    raise InvalidRequest(
                        f"mcp_servers[{i}].paths: {p!r} holds or is inside the appliance's state "
                        "or configuration directory, which no server may see",
                        param=f"mcp_servers[{i}].paths",
                    )

    def _check_model(self, model_id: str) -> None:
        if self.catalog.get(model_id).kind != "chat":
            raise InvalidRequest(
                f"model {model_id!r} is an embedding model; an agent needs a chat model",
                param="model",
            )

    async def create(self, spec: AgentSpec) -> Agent:
        self.check(spec)
        return await self.store.run(self.store.agents.create, spec)

    async def list(self, *, limit: int = 100, after: str | None = None) -> Page[Agent]:
        return await self.store.run(self.store.agents.list, limit=limit, after=after)

    async def get(self, ref: str) -> Agent:
        return await self.store.run(self.store.agents.get, ref)

    async def update(self, ref: str, patch: AgentPatch) -> Agent:
        if patch.model is not UNSET:
            self._check_model(patch.model)
        if patch.mcp_servers is not UNSET:
            self._check_mcp_paths(AgentSpec(name="-", model="-", mcp_servers=patch.mcp_servers))
        if patch.tools is not UNSET:
            self.tools.require(patch.tools)
        if patch.sandbox is not UNSET and patch.sandbox is not None:
            self.sandboxes.catalog.canonical(patch.sandbox)
        return await self.store.run(self.store.agents.update, ref, patch)

    async def tool_listing(self, ref: str) -> AgentTools:
        """Every tool the agent can call, with its source: built-in, or `mcp:<server>`."""
        agent = await self.get(ref)
        return AgentTools(agent=agent.name, items=await self.tools.listing(agent))

    async def delete(self, ref: str, *, with_sessions: bool = False) -> None:
        cleanup = await self.store.run(self.store.agents.delete, ref, with_sessions=with_sessions)
        await self._cleanup(cleanup)
