"""Session routes: `/api/sessions` and the turn stream `POST /api/sessions/{id}/messages`.

The turn streams as server-sent events with names (`event: token`, `tool_call`, `tool_result`,
`message`, `done`, `error`), each `data:` a JSON object. The first event is the user's message,
sent once it is committed. With `"stream": false` the turn answers as one JSON object instead.
A client that disconnects cancels the turn, streamed or not (the session stays whole).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from litestar import Controller, Request, Response, delete, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, FromQuery, JSONBody
from litestar.response import ServerSentEvent
from litestar.response.sse import ServerSentEventMessage

from appliance.api import sse
from appliance.api.disconnect import unless_disconnected
from appliance.app import Appliance
from appliance.sessions.service import (
    CreateSessionRequest,
    ForkRequest,
    SessionDetail,
    TurnRequest,
)
from appliance.sessions.turn import Turn
from appliance.store import Page, Session


async def turn_events(turn: Turn) -> AsyncIterator[ServerSentEventMessage]:
    async for ev in turn.events():
        yield sse.event(ev.data, name=ev.event)


class SessionController(Controller):
    path = "/api/sessions"
    tags = ["sessions"]

    @post("/", status_code=201)
    async def create(
        self, appliance: NamedDependency[Appliance], data: JSONBody[CreateSessionRequest]
    ) -> Session:
        return await appliance.sessions.create(data)

    @get("/")
    async def list_sessions(
        self,
        appliance: NamedDependency[Appliance],
        agent: FromQuery[str | None] = None,
        status: FromQuery[str | None] = None,
        limit: FromQuery[int] = 50,
        after: FromQuery[str | None] = None,
    ) -> Page[Session]:
        return await appliance.sessions.list(agent=agent, status=status, limit=limit, after=after)

    @get("/{session_id:str}")
    async def get_session(
        self, appliance: NamedDependency[Appliance], session_id: FromPath[str]
    ) -> SessionDetail:
        return await appliance.sessions.get(session_id)

    @delete("/{session_id:str}", status_code=204)
    async def remove(
        self, appliance: NamedDependency[Appliance], session_id: FromPath[str]
    ) -> None:
        await appliance.sessions.delete(session_id)

    @post("/{session_id:str}/fork", status_code=201)
    async def fork(
        self,
        appliance: NamedDependency[Appliance],
        session_id: FromPath[str],
        data: JSONBody[ForkRequest | None] = None,
    ) -> Session:
        return await appliance.sessions.fork(session_id, data or ForkRequest())

    @post("/{session_id:str}/messages", status_code=200)
    async def send(
        self,
        appliance: NamedDependency[Appliance],
        request: Request[Any, Any, Any],
        session_id: FromPath[str],
        data: JSONBody[TurnRequest],
    ) -> ServerSentEvent | Response[Any]:
        if not data.stream:
            return Response(
                await unless_disconnected(request, appliance.sessions.run_turn(session_id, data))
            )
        turn = await appliance.sessions.begin_turn(session_id, data)
        return sse.stream(turn_events(turn))
