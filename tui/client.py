"""The console's only way to the daemon: HTTP calls and server-sent-event streams.

`ApplianceClient` wraps one `httpx.AsyncClient` (base URL and bearer token from `--url` and
`--token`) and returns the typed records of `tui.records`. Every failed call becomes one of the
errors of `tui.errors`, and every answer (or lack of one) updates `state`, a `ConnectionState`
reported through `on_connection` so the app can show or clear its banner without each screen
having to care.

`events()` follows `GET /api/events` for as long as it is iterated: when the stream breaks it
reports a `StreamStatus("down")`, waits (0.5 s, doubling up to `backoff_max_s`), reconnects with
the last sequence number it saw (`Last-Event-ID`, so the daemon can replay what was missed) and
reports `StreamStatus("live")` again. A daemon without the route gives `StreamStatus("unsupported")`
once and the iterator ends; the app then polls instead.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx

from tui.errors import DaemonError, DaemonUnauthorized, DaemonUnreachable, NotAvailable
from tui.records import (
    Agent,
    ConnectionState,
    DaemonEvent,
    DaemonStatus,
    GpuReport,
    Health,
    Language,
    ModelInfo,
    RunResult,
    Sandbox,
    Session,
    StreamStatus,
    Trace,
    TranscriptEntry,
    TurnEvent,
    UsageTotals,
)

ConnectionListener = Callable[[ConnectionState], None]

_NO_READ_LIMIT = httpx.Timeout(10.0, read=None)
"""For calls whose answer takes as long as the work (a model load, a sandbox run, a stream)."""


@dataclass(frozen=True)
class SseFrame:
    event: str | None
    id: str | None
    data: str


async def sse_frames(lines: AsyncIterator[str]) -> AsyncIterator[SseFrame]:
    """Server-sent events from a response's lines: `event:`, `id:` and (multi-line) `data:`."""
    event: str | None = None
    event_id: str | None = None
    data: list[str] = []
    async for line in lines:
        if not line:
            if data:
                yield SseFrame(event, event_id, "\n".join(data))
            event, data = None, []
            continue
        if line.startswith(":"):
            continue  # a comment: the server's keep-alive
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            data.append(value)
        elif name == "event":
            event = value
        elif name == "id":
            event_id = value
    if data:
        yield SseFrame(event, event_id, "\n".join(data))


def _items(payload: Any) -> list[Any]:
    """A listing, whether the daemon sends a bare list, a page (`items`) or OpenAI's `data`."""
    if isinstance(payload, list):
        return payload
    if isinstance(payload, dict):
        for key in ("items", "data", "sandboxes", "sessions", "agents", "traces", "languages"):
            if isinstance(payload.get(key), list):
                return list(payload[key])
    return []


def _error_text(resp: httpx.Response) -> tuple[str, str | None]:
    try:
        body = resp.json()
    except ValueError:
        return (resp.text.strip() or resp.reason_phrase, None)
    err = body.get("error") if isinstance(body, dict) else None
    if isinstance(err, dict):
        code = err.get("code")
        return (str(err.get("message") or resp.reason_phrase), str(code) if code is not None else None)
    if isinstance(body, dict) and "detail" in body:
        return (str(body["detail"]), None)
    return (resp.text.strip() or resp.reason_phrase, None)


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
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.AsyncClient(base_url=self.url, headers=headers, timeout=timeout_s, transport=transport)
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self.state = ConnectionState("connecting", self.url)
        self.on_connection: ConnectionListener | None = None
        self.last_event_seq = 0

    async def aclose(self) -> None:
        await self._http.aclose()

    # --- connection state and errors -----------------------------------------------------------

    def _note(self, kind: str, detail: str = "") -> None:
        state = ConnectionState(kind, self.url, detail)
        if state == self.state:
            return
        self.state = state
        if self.on_connection is not None:
            self.on_connection(state)

    def _unreachable(self, exc: Exception) -> DaemonUnreachable:
        reason = str(exc) or type(exc).__name__
        message = (f"cannot reach the appliance at {self.url} ({reason}). Start it with "
                   "`appliance serve`, or pass --url.")
        self._note("unreachable", message)
        return DaemonUnreachable(message)

    def _check(self, resp: httpx.Response) -> None:
        """Raise the error an answer stands for; note that the daemon answered."""
        if resp.status_code in (401, 403):
            text, code = _error_text(resp)
            message = (f"the appliance at {self.url} refused the token ({text}). Pass a valid one with "
                       "--token or APPLIANCE_TOKEN (`appliance token create NAME` makes one).")
            self._note("unauthorized", message)
            raise DaemonUnauthorized(message, status=resp.status_code, code=code)
        self._note("connected")
        if resp.status_code < 400:
            return
        text, code = _error_text(resp)
        route = f"{resp.request.method} {resp.request.url.path}"
        if resp.status_code in (404, 405) and code in (None, "404", "405"):
            raise NotAvailable(f"{route} is not available on this daemon (an older or partial build).",
                               status=resp.status_code, code=code)
        raise DaemonError(text, status=resp.status_code, code=code)

    async def _call(self, method: str, path: str, *, json_body: Any = None, params: dict[str, Any] | None = None,
                    timeout: httpx.Timeout | None = None) -> Any:
        try:
            resp = await self._http.request(method, path, json=json_body, params=params,
                                            timeout=timeout if timeout is not None else httpx.USE_CLIENT_DEFAULT)
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from exc
        self._check(resp)
        return resp.json() if resp.content else None

    @asynccontextmanager
    async def _stream(self, method: str, path: str, *, json_body: Any = None,
                      headers: dict[str, str] | None = None) -> AsyncIterator[httpx.Response]:
        try:
            async with self._http.stream(method, path, json=json_body, headers=headers,
                                         timeout=_NO_READ_LIMIT) as resp:
                if resp.status_code >= 400:
                    await resp.aread()
                self._check(resp)
                yield resp
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from exc

    # --- daemon ---------------------------------------------------------------------------------

    async def health(self) -> Health:
        return Health.from_json(await self._call("GET", "/api/health"))

    async def status(self) -> DaemonStatus:
        return DaemonStatus.from_json(await self._call("GET", "/api/status"))

    async def gpu(self) -> GpuReport:
        return GpuReport.from_json(await self._call("GET", "/api/gpu"))

    async def usage(self) -> UsageTotals:
        return UsageTotals.from_json(await self._call("GET", "/api/usage"))

    # --- models ---------------------------------------------------------------------------------

    async def models(self) -> list[ModelInfo]:
        return [ModelInfo.from_json(m) for m in _items(await self._call("GET", "/api/models"))]

    async def model(self, model_id: str) -> ModelInfo:
        return ModelInfo.from_json(await self._call("GET", f"/api/models/{quote(model_id, safe='')}"))

    async def load_model(self, model_id: str) -> ModelInfo:
        path = f"/api/models/{quote(model_id, safe='')}/load"
        return ModelInfo.from_json(await self._call("POST", path, timeout=_NO_READ_LIMIT))

    async def unload_model(self, model_id: str) -> ModelInfo:
        path = f"/api/models/{quote(model_id, safe='')}/unload"
        return ModelInfo.from_json(await self._call("POST", path, timeout=_NO_READ_LIMIT))

    async def pin_model(self, model_id: str, pinned: bool) -> ModelInfo:
        path = f"/api/models/{quote(model_id, safe='')}/pin"
        return ModelInfo.from_json(await self._call("POST", path, params={"pinned": str(pinned).lower()}))

    async def add_model(self, path: str, model_id: str | None = None, kind: str = "chat") -> ModelInfo:
        body: dict[str, Any] = {"path": path, "kind": kind}
        if model_id:
            body["id"] = model_id
        return ModelInfo.from_json(await self._call("POST", "/api/models", json_body=body))

    async def chat_stream(self, model: str, messages: list[dict[str, Any]], *,
                          max_tokens: int | None = None) -> AsyncIterator[str]:
        """The reply of `POST /v1/chat/completions` (streamed), piece by piece."""
        body: dict[str, Any] = {"model": model, "messages": messages, "stream": True}
        if max_tokens is not None:
            body["max_tokens"] = max_tokens
        async with self._stream("POST", "/v1/chat/completions", json_body=body) as resp:
            async for frame in sse_frames(resp.aiter_lines()):
                if frame.data == "[DONE]":
                    return
                chunk = json.loads(frame.data)
                if isinstance(chunk.get("error"), dict):
                    raise DaemonError(str(chunk["error"].get("message")), code=chunk["error"].get("code"))
                for choice in chunk.get("choices") or []:
                    piece = (choice.get("delta") or {}).get("content")
                    if piece:
                        yield piece

    # --- agents and sessions --------------------------------------------------------------------

    async def agents(self) -> list[Agent]:
        return [Agent.from_json(a) for a in _items(await self._call("GET", "/api/agents"))]

    async def sessions(self, agent: str | None = None, *, limit: int = 200) -> list[Session]:
        params: dict[str, Any] = {"limit": limit}
        if agent:
            params["agent"] = agent
        return [Session.from_json(s) for s in _items(await self._call("GET", "/api/sessions", params=params))]

    async def create_session(self, *, agent: str | None = None, model: str | None = None,
                             title: str | None = None) -> Session:
        """A session with an agent (name or id), or with a bare model."""
        body: dict[str, Any] = {}
        if agent:
            body["agent"] = agent
        if model:
            body["model"] = model
        if title:
            body["title"] = title
        return Session.from_json(await self._call("POST", "/api/sessions", json_body=body))

    async def transcript(self, session_id: str) -> list[TranscriptEntry]:
        """The session's messages, oldest first (from `GET /api/sessions/{id}`)."""
        payload = await self._call("GET", f"/api/sessions/{quote(session_id, safe='')}")
        messages = payload.get("messages") if isinstance(payload, dict) else payload
        return [TranscriptEntry.from_json(m) for m in _items(messages) if isinstance(m, dict)]

    async def send_message(self, session_id: str, content: str, *,
                           max_tokens: int | None = None) -> AsyncIterator[TurnEvent]:
        """One turn of a session: its events (token, tool_call, tool_result, message, done, error)."""
        path = f"/api/sessions/{quote(session_id, safe='')}/messages"
        body: dict[str, Any] = {"content": content}
        if max_tokens is not None:
            body["max_tokens"] = max_tokens
        async with self._stream("POST", path, json_body=body) as resp:
            async for frame in sse_frames(resp.aiter_lines()):
                if frame.data == "[DONE]":
                    return
                try:
                    payload = json.loads(frame.data)
                except ValueError:
                    payload = {"text": frame.data}
                event = TurnEvent.from_frame(frame.event, payload)
                yield event
                if event.kind in ("done", "error"):
                    return

    async def fork_session(self, session_id: str) -> Session:
        return Session.from_json(await self._call("POST", f"/api/sessions/{quote(session_id, safe='')}/fork",
                                                  json_body={}))

    async def delete_session(self, session_id: str) -> None:
        await self._call("DELETE", f"/api/sessions/{quote(session_id, safe='')}")

    # --- sandboxes ------------------------------------------------------------------------------

    async def sandboxes(self) -> list[Sandbox]:
        return [Sandbox.from_json(s) for s in _items(await self._call("GET", "/api/sandboxes"))]

    async def languages(self) -> list[Language]:
        return [Language.from_json(x) for x in _items(await self._call("GET", "/api/sandboxes/languages"))]

    async def create_sandbox(self, language: str) -> Sandbox:
        return Sandbox.from_json(await self._call("POST", "/api/sandboxes", json_body={"language": language}))

    async def exec_in_sandbox(self, sandbox_id: str, code: str, stdin: str | None = None) -> RunResult:
        body: dict[str, Any] = {"code": code}
        if stdin:
            body["stdin"] = stdin
        path = f"/api/sandboxes/{quote(sandbox_id, safe='')}/exec"
        return RunResult.from_json(await self._call("POST", path, json_body=body, timeout=_NO_READ_LIMIT))

    async def run(self, language: str, code: str, stdin: str | None = None) -> RunResult:
        """A one-shot run in a fresh sandbox (`POST /api/run`)."""
        body: dict[str, Any] = {"language": language, "code": code}
        if stdin:
            body["stdin"] = stdin
        return RunResult.from_json(await self._call("POST", "/api/run", json_body=body, timeout=_NO_READ_LIMIT))

    async def destroy_sandbox(self, sandbox_id: str) -> None:
        await self._call("DELETE", f"/api/sandboxes/{quote(sandbox_id, safe='')}")

    # --- traces ---------------------------------------------------------------------------------

    async def traces(self, *, model: str | None = None, session_id: str | None = None,
                     limit: int = 100) -> list[Trace]:
        params: dict[str, Any] = {"limit": limit}
        if model:
            params["model"] = model
        if session_id:
            params["session_id"] = session_id
        return [Trace.from_json(t) for t in _items(await self._call("GET", "/api/traces", params=params))]

    async def trace(self, trace_id: str) -> Trace:
        return Trace.from_json(await self._call("GET", f"/api/traces/{quote(trace_id, safe='')}"))

    # --- the events stream ----------------------------------------------------------------------

    async def events(self) -> AsyncGenerator[DaemonEvent | StreamStatus, None]:
        """Follow /api/events forever, reconnecting with exponential backoff (see module doc)."""
        delay = self.backoff_initial_s
        while True:
            headers = {"Accept": "text/event-stream"}
            if self.last_event_seq:
                headers["Last-Event-ID"] = str(self.last_event_seq)
            try:
                async with self._stream("GET", "/api/events", headers=headers) as resp:
                    delay = self.backoff_initial_s
                    yield StreamStatus("live")
                    async for frame in sse_frames(resp.aiter_lines()):
                        try:
                            event = DaemonEvent.from_json(json.loads(frame.data))
                        except ValueError:
                            continue
                        if event.seq:
                            self.last_event_seq = event.seq
                        yield event
                detail = "the daemon closed the events stream"
            except NotAvailable as exc:
                yield StreamStatus("unsupported", exc.message)
                return
            except DaemonError as exc:
                detail = exc.message
            yield StreamStatus("down", detail, retry_in_s=delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.backoff_max_s)
