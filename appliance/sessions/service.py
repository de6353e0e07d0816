"""SessionService: sessions as the API offers them, and the start of each turn.

A session is a conversation with an agent (or a bare model) whose transcript lives in the store.
This service opens, lists, reads, forks and deletes sessions, and starts turns: it checks the
request, takes the session's turn lock (one turn at a time per session; a second one waits a
little, then gets 409), commits the user's message, and hands the turn to the agent loop, which
streams it. The `message` event of the user's message is sent only after that commit, so an
acknowledged message survives any crash.

Deleting a session removes its rows in one transaction and then what lives outside the database:
its parked KV files and its sandbox (with the workspace). A running turn of the session is
cancelled first. The service also owns the parts every turn shares: the tool box and the
model-call helper (`SessionModel`), which `/v1/responses` uses too. The KV parking of sessions
(`KvParking`, the one owner of a session's status) is built by the composition root
(appliance.app) and handed to this service and to ChatService alike.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import msgspec

from appliance.config import Config
from appliance.errors import ApplianceError, Conflict, InvalidRequest
from appliance.models import chat_format as cf
from appliance.models.catalog import ModelCatalog
from appliance.models.scheduler import ModelScheduler
from appliance.openai.chat import ChatService, bounded
from appliance.sampling import MaxTokens, Seed, Temperature
from appliance.sandbox.service import SandboxService
from appliance.sessions.mcp_clients import McpClients
from appliance.sessions.model_call import SessionModel
from appliance.sessions.parking import KvParking
from appliance.sessions.tools import RunCode, ToolBox, mcp_choices
from appliance.sessions.turn import AgentLoop, Turn, TurnSpec
from appliance.store import Agent, KvEntry, Message, Page, Session, SessionCleanup, Store, ToolRun
from appliance.telemetry.recorder import Telemetry

log = logging.getLogger("appliance.sessions")

TURN_LOCK_WAIT_S = 5.0
"""How long a new turn waits for the session's previous one (e.g. a cancelled one settling)."""


class CreateSessionRequest(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    agent: str | None = None
    """The agent's name or id."""
    model: str | None = None
    """A model id: overrides the agent's model, or makes a bare-model session without an agent."""
    title: str = ""


class ForkRequest(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    at_message: str | None = None
    """The id of the last message to copy (inclusive); empty copies the whole transcript."""
    title: str | None = None


class TurnRequest(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    content: str
    """The user's message."""
    tool_choice: str | dict[str, Any] | None = None
    """For the turn's first model call: "auto", "none", "required" or
    {"type": "function", "function": {"name": ...}}. Later calls use "auto"."""
    temperature: Temperature | None = None
    max_tokens: MaxTokens | None = None
    """At most the model's context_size; unset: the agent's, else the model profile's."""
    seed: Seed | None = None
    stream: bool = True
    """false: wait for the turn and get its messages and the done event as one JSON object."""


class SessionDetail(Session, kw_only=True):
    messages: list[Message]
    tool_runs: list[ToolRun]
    parked: list[KvEntry]
    """The session's KV state on disk, one entry per model file it was parked for."""
    hot: bool
    """Whether a model worker's slot holds the session's tokens right now."""


def agent_params(agent: Agent | None) -> dict[str, Any]:
    if agent is None:
        return {}
    return {k: v for k, v in msgspec.structs.asdict(agent.params).items() if v is not None}


class SessionService:
    def __init__(
        self,
        config: Config,
        *,
        store: Store,
        chat: ChatService,
        scheduler: ModelScheduler,
        catalog: ModelCatalog,
        sandboxes: SandboxService,
        kv: KvParking,
        telemetry: Telemetry | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.catalog = catalog
        self.sandboxes = sandboxes
        self.kv = kv
        self.mcp = McpClients(sandboxes)
        self.tools = ToolBox([RunCode(sandboxes, store)], self.mcp)
        self.model = SessionModel(store, chat, scheduler, catalog, self.kv)
        self.loop = AgentLoop(store, self.model, self.tools, self.kv, telemetry)
        self._locks: dict[str, asyncio.Lock] = {}
        self._turns: dict[str, Turn] = {}

    async def stop(self) -> None:
        """Cancel the running turns and wait for them to settle (before the KV parking stops, so
        what they leave in their slots is parked)."""
        for turn in list(self._turns.values()):
            turn.cancel()
        await asyncio.gather(
            *(t.wait() for t in list(self._turns.values())), return_exceptions=True
        )
        await self.mcp.stop()

    def lock(self, session_id: str) -> asyncio.Lock:
        """The lock that lets one turn (or one /v1/responses call) at a time into a session."""
        return self._locks.setdefault(session_id, asyncio.Lock())

    async def acquire(self, session_id: str) -> asyncio.Lock:
        lock = self.lock(session_id)
        try:
            await asyncio.wait_for(lock.acquire(), TURN_LOCK_WAIT_S)
        except TimeoutError:
            raise Conflict(
                f"a turn is already running in session {session_id!r}; wait for its done "
                "event, then send the next message",
                param="session_id",
            ) from None
        return lock

    # --- sessions ---------------------------------------------------------------------------

    async def create(self, req: CreateSessionRequest) -> Session:
        if req.model is not None:
            self.catalog.get(req.model)
        return await self.store.run(
            self.store.sessions.create, req.agent, title=req.title, model=req.model
        )

    async def list(
        self,
        *,
        agent: str | None = None,
        status: str | None = None,
        limit: int = 50,
        after: str | None = None,
    ) -> Page[Session]:
        if status is not None and status not in ("created", "active", "parked"):
            raise InvalidRequest("status must be created, active or parked", param="status")
        return await self.store.run(
            self.store.sessions.list,
            agent=agent,
            status=status,  # type: ignore[arg-type]
            limit=limit,
            after=after,
        )

    async def get(self, session_id: str) -> SessionDetail:
        def read() -> SessionDetail:
            s = self.store.sessions.get(session_id)
            return SessionDetail(
                **msgspec.structs.asdict(s),
                messages=self.store.messages.transcript(session_id),
                tool_runs=self.store.tool_runs.for_session(session_id),
                parked=self.store.kv.entries(session_id),
                hot=session_id in self.kv.hot,
            )

        return await self.store.run(read)

    async def fork(self, session_id: str, req: ForkRequest) -> Session:
        return await self.store.run(
            self.store.sessions.fork, session_id, at_message=req.at_message, title=req.title
        )

    async def delete(self, session_id: str) -> None:
        turn = self._turns.get(session_id)
        if turn is not None:
            turn.cancel()
            await turn.wait()
        cleanup = await self.store.run(self.store.sessions.delete, session_id)
        await self.cleanup(cleanup)

    async def cleanup(self, cleanup: SessionCleanup) -> None:
        """After sessions were deleted from the database: their KV files, sandboxes and locks."""
        await self.kv.forget(cleanup.session_ids, cleanup.kv_paths)
        for sandbox_id in cleanup.sandbox_ids:
            with contextlib.suppress(ApplianceError):  # already reaped, or sandboxes are off
                await self.sandboxes.delete(sandbox_id)
        for sid in cleanup.session_ids:
            await self.mcp.stop_session(sid)
            self.tools.forget(sid)
            lock = self._locks.get(sid)
            if lock is not None and not lock.locked():
                del self._locks[sid]

    # --- turns ------------------------------------------------------------------------------

    async def begin_turn(self, session_id: str, req: TurnRequest) -> Turn:
        """Check the request, commit the user's message and start the turn; its events begin with
        that message. Errors before the commit are raised here (and become HTTP errors)."""
        if not req.content.strip():
            raise InvalidRequest(
                "content must not be empty: send the user's message", param="content"
            )
        session = await self.store.run(self.store.sessions.get, session_id)
        agent = (
            await self.store.run(self.store.agents.get, session.agent_id)
            if session.agent_id
            else None
        )
        model_id = session.model or (agent.model if agent else None)
        if not model_id:
            raise InvalidRequest(
                f"session {session_id!r} has neither a model nor an agent", param="model"
            )
        prof = self.catalog.get(model_id)
        if prof.kind != "chat":
            raise InvalidRequest(
                f"model {model_id!r} is an embedding model; agents need a chat model", param="model"
            )
        if agent is not None:
            self.tools.require(agent.tools)
        if req.tool_choice not in (None, "auto", "none") and not (
            agent and (agent.tools or agent.mcp_servers)
        ):
            raise InvalidRequest("tool_choice needs an agent with tools", param="tool_choice")
        if agent is not None and (agent.tools or agent.mcp_servers):
            cf.select_tools(
                self.tools.specs(agent.tools) + mcp_choices(agent, req.tool_choice), req.tool_choice
            )  # a bad choice fails here, not mid-turn (an MCP tool's name is checked by its server)
        params = agent_params(agent)
        for key in ("temperature", "max_tokens", "seed"):
            if getattr(req, key) is not None:
                params[key] = getattr(req, key)
        bounded(params, prof)  # a limit beyond the context fails now, not inside the turn's stream
        lock = await self.acquire(session_id)
        try:
            user = await self.store.run(self.store.messages.append, session_id, "user", req.content)
            if session.status != "active":
                await self.kv.activate(session_id)
            if not session.title:
                title = " ".join(req.content.split())[:60]
                await self.store.run(self.store.sessions.update, session_id, title=title)
        except BaseException:
            lock.release()
            raise
        spec = TurnSpec(
            session_id=session_id,
            model_id=model_id,
            agent=agent,
            params=params,
            tool_choice=req.tool_choice,
            max_steps=max(1, self.config.agents.max_steps),
        )
        turn = Turn(spec, user)
        self._turns[session_id] = turn

        def release() -> None:
            if self._turns.get(session_id) is turn:
                del self._turns[session_id]
            lock.release()

        self.loop.start(turn, release)
        return turn

    async def run_turn(self, session_id: str, req: TurnRequest) -> dict[str, Any]:
        """A whole turn as one object: the messages it stored and its done event (stream=false)."""
        turn = await self.begin_turn(session_id, req)
        messages: list[Any] = []
        async for ev in turn.events():
            if ev.event == "message":
                messages.append(ev.data["message"])
            elif ev.event == "error":
                raise turn.error or ApplianceError(ev.data["error"]["message"])
            elif ev.event == "done":
                return {"messages": messages, "done": ev.data}
        raise ApplianceError("the turn ended without a result; see the daemon log")

    def stats(self) -> dict[str, Any]:
        return {"turns_running": len(self._turns), **self.kv.stats()}
