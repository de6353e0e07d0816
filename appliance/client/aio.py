"""`ApplianceClient`: the console's async way to the daemon, HTTP calls and event streams.

It wraps one `httpx.AsyncClient` (base URL and bearer token from `--url` and `--token`), sends
the calls of `appliance.client.calls` and returns their typed records. Every failed call raises
one of the errors of `appliance.client.errors`, and every answer (or lack of one) updates
`state`, a `ConnectionState` reported through `on_connection`, so the console can show or clear
its banner without each screen having to care.

`events()` follows `GET /api/events` for as long as it is iterated: when the stream breaks it
reports a `StreamStatus("down")`, waits (0.5 s, doubling up to `backoff_max_s`), reconnects with
the last sequence number it saw (`Last-Event-ID`, so the daemon can replay what was missed) and
reports `StreamStatus("live")` again. A daemon without the route gives `StreamStatus("unsupported")`
once and the iterator ends; the console then polls instead.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import httpx
from httpx_sse import EventSource

from appliance.client import calls, sse
from appliance.client.base import NO_READ_LIMIT, auth_headers
from appliance.client.calls import Call
from appliance.client.errors import (
    ClientError,
    DaemonUnauthorized,
    NotAvailable,
    error_for,
    unreachable,
)
from appliance.client.records import (
    Agent,
    ConnectionState,
    DaemonEvent,
    DaemonStatus,
    GpuReport,
    Health,
    Language,
    ModelInfo,
    PullInfo,
    RunResult,
    Sandbox,
    Session,
    StreamStatus,
    Trace,
    TranscriptEntry,
    TurnEvent,
    UsageTotals,
)

T = TypeVar("T")
ConnectionListener = Callable[[ConnectionState], None]


class ApplianceClient:
    """Typed, async access to one appliance daemon. Create it, use it on one event loop, `aclose`."""

    def __init__(
        self,
        url: str,
        token: str | None = None,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        timeout_s: float = 15.0,
        backoff_initial_s: float = 0.5,
        backoff_max_s: float = 8.0,
    ) -> None:
        self.url = url.rstrip("/")
        self._http = httpx.AsyncClient(
            base_url=self.url, headers=auth_headers(token), timeout=timeout_s, transport=transport
        )
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self.state = ConnectionState("connecting", self.url)
        self.on_connection: ConnectionListener | None = None
        self.last_event_seq = 0

    async def aclose(self) -> None:
        await self._http.aclose()

    # --- sending, and the connection state -------------------------------------------------------

    def _note(self, kind: str, detail: str = "") -> None:
        state = ConnectionState(kind, self.url, detail)
        if state == self.state:
            return
        self.state = state
        if self.on_connection is not None:
            self.on_connection(state)

    def _check(self, resp: httpx.Response) -> None:
        """Raise the error an answer stands for; note that the daemon answered."""
        err = error_for(resp, self.url)
        if isinstance(err, DaemonUnauthorized):
            self._note("unauthorized", err.message)
            raise err
        self._note("connected")
        if err is not None:
            raise err

    def _unreachable(self, exc: Exception) -> ClientError:
        err = unreachable(self.url, exc)
        self._note("unreachable", err.message)
        return err

    async def call(self, c: Call[T]) -> T:
        try:
            resp = await self._http.request(
                c.method,
                c.path,
                json=c.body,
                params=c.params,
                timeout=NO_READ_LIMIT if c.slow else httpx.USE_CLIENT_DEFAULT,
            )
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from exc
        self._check(resp)
        return c.parse(resp.json() if resp.content else None)

    @asynccontextmanager
    async def _events(
        self, method: str, path: str, *, body: Any = None, headers: dict[str, str] | None = None
    ) -> AsyncIterator[EventSource]:
        try:
            async with self._http.stream(
                method, path, json=body, headers=headers, timeout=NO_READ_LIMIT
            ) as resp:
                if resp.status_code >= 400:
                    await resp.aread()
                self._check(resp)
                yield EventSource(resp)
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from exc

    # --- the daemon ----------------------------------------------------------------------------

    async def health(self) -> Health:
        return await self.call(calls.health())

    async def status(self) -> DaemonStatus:
        return await self.call(calls.status())

    async def gpu(self) -> GpuReport:
        return await self.call(calls.gpu())

    async def usage(self) -> UsageTotals:
        return await self.call(calls.usage())

    # --- models --------------------------------------------------------------------------------

    async def models(self) -> list[ModelInfo]:
        return await self.call(calls.models())

    async def model(self, model_id: str) -> ModelInfo:
        return await self.call(calls.model(model_id))

    async def load_model(self, model_id: str) -> ModelInfo:
        return await self.call(calls.load_model(model_id))

    async def unload_model(self, model_id: str) -> ModelInfo:
        return await self.call(calls.unload_model(model_id))

    async def pin_model(self, model_id: str, pinned: bool) -> ModelInfo:
        return await self.call(calls.pin_model(model_id, pinned))

    async def add_model(
        self, path: str, model_id: str | None = None, kind: str = "chat"
    ) -> ModelInfo:
        return await self.call(calls.add_model(path, model_id, kind))

    async def pull_model(
        self, source: str, model_id: str | None = None, sha256: str | None = None
    ) -> PullInfo:
        return await self.call(calls.pull_model(source, model_id, sha256))

    async def chat_stream(
        self, model: str, messages: list[dict[str, Any]], *, max_tokens: int | None = None
    ) -> AsyncIterator[str]:
        """The reply of `POST /v1/chat/completions` (streamed), piece by piece."""
        body = calls.chat_body(model, messages, max_tokens)
        async with self._events("POST", "/v1/chat/completions", body=body) as source:
            async for event in source.aiter_sse():
                piece = sse.chat_piece(event)
                if piece is None:
                    return
                if piece:
                    yield piece

    # --- agents and sessions -------------------------------------------------------------------

    async def agents(self) -> list[Agent]:
        return await self.call(calls.agents())

    async def sessions(self, agent: str | None = None, *, limit: int = 200) -> list[Session]:
        return await self.call(calls.sessions(agent, limit=limit))

    async def create_session(
        self, *, agent: str | None = None, model: str | None = None, title: str | None = None
    ) -> Session:
        return await self.call(calls.create_session(agent=agent, model=model, title=title))

    async def transcript(self, session_id: str) -> list[TranscriptEntry]:
        return await self.call(calls.transcript(session_id))

    async def send_message(
        self, session_id: str, content: str, *, max_tokens: int | None = None
    ) -> AsyncIterator[TurnEvent]:
        """One turn of a session: its events (token, tool_call, tool_result, message, done, error)."""
        body = calls.turn_body(content, max_tokens)
        async with self._events("POST", calls.turn_path(session_id), body=body) as source:
            async for frame in source.aiter_sse():
                event = sse.turn_event(frame)
                if event is None:
                    return
                yield event
                if sse.ends_turn(event):
                    return

    async def fork_session(self, session_id: str) -> Session:
        return await self.call(calls.fork_session(session_id))

    async def delete_session(self, session_id: str) -> None:
        await self.call(calls.delete_session(session_id))

    # --- sandboxes -----------------------------------------------------------------------------

    async def sandboxes(self) -> list[Sandbox]:
        return await self.call(calls.sandboxes())

    async def languages(self) -> list[Language]:
        return await self.call(calls.languages())

    async def create_sandbox(self, language: str) -> Sandbox:
        return await self.call(calls.create_sandbox(language))

    async def exec_in_sandbox(
        self, sandbox_id: str, code: str, stdin: str | None = None
    ) -> RunResult:
        return await self.call(calls.exec_in_sandbox(sandbox_id, code, stdin))

    async def run(self, language: str, code: str, stdin: str | None = None) -> RunResult:
        return await self.call(calls.run(language, code, stdin))

    async def destroy_sandbox(self, sandbox_id: str) -> None:
        await self.call(calls.destroy_sandbox(sandbox_id))

    # --- traces --------------------------------------------------------------------------------

    async def traces(
        self, *, model: str | None = None, session_id: str | None = None, limit: int = 100
    ) -> list[Trace]:
        return await self.call(calls.traces(model=model, session_id=session_id, limit=limit))

    async def trace(self, trace_id: str) -> Trace:
        return await self.call(calls.trace(trace_id))

    # --- the events stream ---------------------------------------------------------------------

    async def events(self) -> AsyncGenerator[DaemonEvent | StreamStatus, None]:
        """Follow /api/events forever, reconnecting with exponential backoff (see module doc)."""
        delay = self.backoff_initial_s
        while True:
            headers = {"Accept": "text/event-stream"}
            if self.last_event_seq:
                headers["Last-Event-ID"] = str(self.last_event_seq)
            try:
                async with self._events("GET", "/api/events", headers=headers) as source:
                    delay = self.backoff_initial_s
                    yield StreamStatus("live")
                    async for frame in source.aiter_sse():
                        event = sse.daemon_event(frame)
                        if event is None:
                            continue
                        if event.seq:
                            self.last_event_seq = event.seq
                        yield event
                detail = "the daemon closed the events stream"
            except NotAvailable as exc:
                yield StreamStatus("unsupported", exc.message)
                return
            except ClientError as exc:
                detail = exc.message
            yield StreamStatus("down", detail, retry_in_s=delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.backoff_max_s)
