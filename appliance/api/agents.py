"""Agent routes: `/api/agents` create, list, read, update and delete."""

from __future__ import annotations

from litestar import Controller, delete, get, patch, post
from litestar.di import NamedDependency
from litestar.params import FromPath, FromQuery, JSONBody

from appliance.app import Appliance
from appliance.sessions.tools import AgentTools
from appliance.store import Agent, AgentPatch, AgentSpec, Page


class AgentController(Controller):
    path = "/api/agents"
    tags = ["agents"]

    @post("/", status_code=201)
    async def create(
        self, appliance: NamedDependency[Appliance], data: JSONBody[AgentSpec]
    ) -> Agent:
        return await appliance.agents.create(data)

    @get("/")
    async def list_agents(
        self,
        appliance: NamedDependency[Appliance],
        limit: FromQuery[int] = 100,
        after: FromQuery[str | None] = None,
    ) -> Page[Agent]:
        return await appliance.agents.list(limit=limit, after=after)

    @get("/{ref:str}")
    async def get_agent(self, appliance: NamedDependency[Appliance], ref: FromPath[str]) -> Agent:
        return await appliance.agents.get(ref)

    @get("/{ref:str}/tools")
    async def tools(self, appliance: NamedDependency[Appliance], ref: FromPath[str]) -> AgentTools:
        """Every tool the agent can call, with its source; its MCP servers are started to list
        theirs (and stopped after)."""
        return await appliance.agents.tool_listing(ref)

    @patch("/{ref:str}")
    async def update(
        self, appliance: NamedDependency[Appliance], ref: FromPath[str], data: JSONBody[AgentPatch]
    ) -> Agent:
        return await appliance.agents.update(ref, data)

    @delete("/{ref:str}", status_code=204)
    async def remove(
        self,
        appliance: NamedDependency[Appliance],
        ref: FromPath[str],
        with_sessions: FromQuery[bool] = False,
    ) -> None:
        await appliance.agents.delete(ref, with_sessions=with_sessions)
