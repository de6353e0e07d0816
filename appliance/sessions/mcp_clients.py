"""Agents as MCP clients: the servers of an agent's `mcp_servers`, per session.

A session's servers are started (connected, for HTTP ones) when its first turn needs their tools,
reused by its later turns and stopped with the session, when the daemon stops, or after
`IDLE_S` unused. Each connection is one task that holds the official SDK's `ClientSession` open
over its transport: stdio servers run inside a sandbox (appliance.sandbox.servers) and this
module pumps their pipes; HTTP servers use the SDK's Streamable HTTP client.

Their tools are listed at start (and again after the server's tools/list_changed) and offered as `<server>__<tool>` with the server's input schema. A server that does
not start is an McpServerError naming it (the turn's error event); one that dies mid-call answers
that call with a tool error naming it, and is started afresh on its next use.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import anyio
import mcp_types as types
from mcp.client._transport import TransportStreams
from mcp.client.session import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from mcp.shared.exceptions import MCPError
from mcp.shared.message import SessionMessage
from mcp_types import CONNECTION_CLOSED

from appliance.errors import ApplianceError
from appliance.sandbox.aio import read_some, write_all
from appliance.sandbox.servers import spawn_server
from appliance.sandbox.service import SandboxService
from appliance.store.mcp_servers import TOOL_NAME, TOOL_NAME_LIMIT, McpServerSpec, tool_name

log = logging.getLogger("appliance.agents")

START_TIMEOUT_S = 30.0
IDLE_S = 600.0
"""A session's servers unused for this long are stopped (started again on the next use)."""
STDERR_KEEP = 2000
MAX_TOOLS = 64
"""The most tools of one server offered to the model (a small model's prompt is short)."""
DESCRIPTION_CHARS = 1024
TOOL_NAME_RE = re.compile(TOOL_NAME)
LINE_LIMIT = 4 << 20
"""The longest message a stdio server may write (4 MiB)."""


class McpServerError(ApplianceError):
    """An agent's MCP server could not be started or reached."""

    status = 502
    type = "mcp_server_error"
    code = "mcp_server_failed"


@dataclass
class McpTool:
    server: str
    name: str
    """The server's own name for it."""
    description: str
    parameters: dict[str, Any]
    timeout_s: float

    @property
    def offered_name(self) -> str:
        return tool_name(self.server, self.name)


@asynccontextmanager
async def sandboxed_stdio(
    sandboxes: SandboxService, spec: McpServerSpec, stderr: list[bytes]
) -> AsyncIterator[TransportStreams]:
    """The SDK's stdio transport, for a server that runs in a sandbox."""
    engine = sandboxes.engine
    if engine is None:
        raise McpServerError(f"MCP server {spec.name!r} cannot start: sandboxes are not running")
    assert spec.command is not None
    server = await spawn_server(
        engine, spec.command, spec.args, env=spec.env, paths=spec.paths, network=spec.network
    )
    proc = server.process
    assert proc.stdin_fd is not None
    stdin_fd = proc.stdin_fd
    read_w, read_r = anyio.create_memory_object_stream[SessionMessage | Exception](0)
    write_w, write_r = anyio.create_memory_object_stream[SessionMessage](0)

    async def reader() -> None:
        buf = b""
        async with read_w:
            while chunk := await read_some(proc.stdout_fd):
                buf += chunk
                *lines, buf = buf.split(b"\n")
                if len(buf) > LINE_LIMIT:
                    await read_w.send(ValueError("the server wrote a line over 4 MiB"))
                    return
                for line in lines:
                    if not line.strip():
                        continue
                    try:
                        msg = types.jsonrpc_message_adapter.validate_json(line, by_name=False)
                    except ValueError as exc:
                        await read_w.send(exc)
                        continue
                    await read_w.send(SessionMessage(msg))

    async def writer() -> None:
        async with write_r:
            async for m in write_r:
                data = m.message.model_dump_json(by_alias=True, exclude_unset=True) + "\n"
                await write_all(stdin_fd, data.encode())

    async def drain_stderr() -> None:
        while chunk := await read_some(proc.stderr_fd):
            stderr.append(chunk)
            while sum(map(len, stderr)) > STDERR_KEEP and len(stderr) > 1:
                stderr.pop(0)

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(reader)
            tg.start_soon(writer)
            tg.start_soon(drain_stderr)
            try:
                yield read_r, write_w
            finally:
                tg.cancel_scope.cancel()
    finally:
        with anyio.CancelScope(shield=True):
            await server.close()


@dataclass
class McpConnection:
    """One running server of one session."""

    spec: McpServerSpec
    sandboxes: SandboxService
    session: ClientSession | None = None
    tools: list[McpTool] = field(default_factory=list)
    last_used: float = field(default_factory=time.monotonic)
    _task: asyncio.Task[None] | None = None
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _stderr: list[bytes] = field(default_factory=list)
    failure: str | None = None
    stale: bool = False
    in_flight: int = 0
    """Calls waiting for their result (an idle stop waits for them)."""
    """The server said its tool list changed (tools/list_changed): listed again at next use."""

    @property
    def alive(self) -> bool:
        return self._task is not None and not self._task.done() and self.session is not None

    def _why(self) -> str:
        tail = b"".join(self._stderr).decode(errors="replace").strip()
        return self.failure or (f"its last output: {tail[-500:]}" if tail else "it exited")

    async def start(self) -> None:
        ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._task = asyncio.create_task(self._serve(ready), name=f"mcp-{self.spec.name}")
        try:
            await asyncio.wait_for(asyncio.shield(ready), START_TIMEOUT_S)
        except TimeoutError:
            await self.stop()
            raise McpServerError(
                f"MCP server {self.spec.name!r} did not answer initialize within "
                f"{START_TIMEOUT_S:g} s"
            ) from None
        except McpServerError:
            await self.stop()
            raise

    def _transport(self) -> contextlib.AbstractAsyncContextManager[TransportStreams]:
        if self.spec.command is not None:
            return sandboxed_stdio(self.sandboxes, self.spec, self._stderr)
        assert self.spec.url is not None
        client = create_mcp_http_client(headers=dict(self.spec.headers))
        return streamable_http_client(self.spec.url, http_client=client)

    async def _serve(self, ready: asyncio.Future[None]) -> None:
        name = self.spec.name
        try:
            async with (
                self._transport() as (r, w),
                ClientSession(r, w, message_handler=self._on_message) as session,
            ):
                await session.initialize()
                await self._list(session)
                self.session = session
                ready.set_result(None)
                await self._stop.wait()
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            self.failure = _describe(exc)
            log.info("MCP server %s stopped: %s", name, self.failure)
            if not ready.done():
                ready.set_exception(
                    McpServerError(f"MCP server {name!r} failed to start: {self._why()}")
                )
        finally:
            self.session = None
            if not ready.done():
                ready.set_exception(
                    McpServerError(f"MCP server {name!r} failed to start: {self._why()}")
                )

    async def _on_message(self, message: Any) -> None:
        if isinstance(message, types.ToolListChangedNotification):
            self.stale = True

    async def _list(self, session: ClientSession) -> None:
        """The server's tools that are allowed and can be offered: a name the model can call
        (TOOL_NAME, `<server>__<tool>` within 64 characters), at most MAX_TOOLS of them."""
        listed = await session.list_tools()
        allowed = set(self.spec.tools) if self.spec.tools is not None else None
        tools: list[McpTool] = []
        for t in listed.tools:
            if allowed is not None and t.name not in allowed:
                continue
            offered = tool_name(self.spec.name, t.name)
            if not TOOL_NAME_RE.match(t.name) or len(offered) > TOOL_NAME_LIMIT:
                log.warning(
                    "MCP server %s: tool %r has a name no model can call; skipped",
                    self.spec.name,
                    t.name[:100],
                )
                continue
            if len(tools) == MAX_TOOLS:
                log.warning(
                    "MCP server %s offers over %d tools; the rest are skipped",
                    self.spec.name,
                    MAX_TOOLS,
                )
                break
            tools.append(
                McpTool(
                    server=self.spec.name,
                    name=t.name,
                    description=(t.description or t.title or t.name)[:DESCRIPTION_CHARS],
                    parameters=t.input_schema,
                    timeout_s=self.spec.timeout_s,
                )
            )
        self.tools = tools

    async def refresh(self) -> None:
        """List the tools again if the server said they changed."""
        if self.stale and self.session is not None:
            self.stale = False
            try:
                await asyncio.wait_for(self._list(self.session), START_TIMEOUT_S)
            except Exception as exc:
                raise McpServerError(
                    f"MCP server {self.spec.name!r} could not list its tools: {_describe(exc)}"
                ) from None

    async def call(self, tool: McpTool, args: dict[str, Any]) -> types.CallToolResult:
        session = self.session
        if session is None:
            raise McpServerError(f"MCP server {self.spec.name!r} is not running ({self._why()})")
        self.last_used = time.monotonic()
        call = asyncio.ensure_future(session.call_tool(tool.name, args))
        assert self._task is not None
        self.in_flight += 1
        try:
            done, _ = await asyncio.wait(
                [call, self._task], timeout=tool.timeout_s, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            self.in_flight -= 1
            self.last_used = time.monotonic()
        if call in done:
            exc = call.exception()
            if exc is None:
                return call.result()
            if not (isinstance(exc, MCPError) and exc.code == CONNECTION_CLOSED):
                raise McpServerError(
                    f"MCP server {self.spec.name!r} refused the call to {tool.name}: "
                    f"{_describe(exc)}"
                )
        else:
            call.cancel()
            with contextlib.suppress(BaseException):
                await call
            if self._task not in done:
                raise TimeoutError(f"{tool.offered_name} took longer than {tool.timeout_s:g} s")
        self.session = None  # the connection is gone: stop what is left, start afresh next time
        await asyncio.sleep(0.1)  # let the stderr reader take the server's last words
        why = self._why()
        await self.stop()
        raise McpServerError(
            f"MCP server {self.spec.name!r} stopped during the call to {tool.name} ({why}); "
            "it is started again on its next use"
        )

    async def stop(self) -> None:
        self._stop.set()
        task = self._task
        if task is None:
            return
        try:
            await asyncio.wait_for(asyncio.shield(task), 5.0)
        except BaseException:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task


def _describe(exc: BaseException) -> str:
    if isinstance(exc, BaseExceptionGroup):
        return "; ".join(_describe(e) for e in exc.exceptions)
    if isinstance(exc, ApplianceError):
        return exc.message
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def result_text(result: types.CallToolResult) -> tuple[str, dict[str, Any]]:
    """What the model reads of a tool result, and the structured facts for the event."""
    parts: list[str] = []
    for block in result.content:
        if isinstance(block, types.TextContent):
            parts.append(block.text)
        else:
            parts.append(f"[{block.type} content]")
    if not parts and result.structured_content is not None:
        parts.append(json.dumps(result.structured_content))
    detail: dict[str, Any] = {"is_error": bool(result.is_error)}
    if result.structured_content is not None:
        detail["structured_content"] = result.structured_content
    return "\n".join(parts) or "(no output)", detail


class McpClients:
    """Every session's MCP server connections, keyed by session id and server name."""

    def __init__(self, sandboxes: SandboxService, idle_s: float = IDLE_S) -> None:
        self.sandboxes = sandboxes
        self.idle_s = idle_s
        self._conns: dict[tuple[str, str], McpConnection] = {}
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}
        self._reaper: asyncio.Task[None] | None = None

    async def connection(self, session_id: str, spec: McpServerSpec) -> McpConnection:
        """The session's running connection to `spec`, started now if it is not running."""
        key = (session_id, spec.name)
        async with self._locks.setdefault(key, asyncio.Lock()):
            conn = self._conns.get(key)
            if conn is not None and conn.alive and conn.spec == spec:
                conn.last_used = time.monotonic()
                await conn.refresh()
                return conn
            if conn is not None:
                await conn.stop()
                self._conns.pop(key, None)
            conn = McpConnection(spec, self.sandboxes)
            await conn.start()
            self._conns[key] = conn
            self._ensure_reaper()
            return conn

    async def tools(self, session_id: str, servers: list[McpServerSpec]) -> list[McpTool]:
        out: list[McpTool] = []
        for spec in servers:
            out.extend((await self.connection(session_id, spec)).tools)
        return out

    def running(self, session_id: str, server: str) -> McpConnection | None:
        return self._conns.get((session_id, server))

    async def stop_session(self, session_id: str) -> None:
        for key in [k for k in self._conns if k[0] == session_id]:
            conn = self._conns.pop(key)
            self._locks.pop(key, None)
            await conn.stop()

    async def stop(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
            self._reaper = None
        for sid in {k[0] for k in self._conns}:
            await self.stop_session(sid)

    def _ensure_reaper(self) -> None:
        if self._reaper is None or self._reaper.done():
            self._reaper = asyncio.create_task(self._reap(), name="mcp-idle-reaper")

    async def _reap(self) -> None:
        while self._conns:
            await asyncio.sleep(min(30.0, self.idle_s / 2))
            now = time.monotonic()
            for key, conn in list(self._conns.items()):
                lock = self._locks.get(key)
                busy = conn.in_flight or (lock is not None and lock.locked())
                if now - conn.last_used > self.idle_s and not busy:
                    log.info("stopping idle MCP server %s of session %s", key[1], key[0])
                    self._conns.pop(key, None)
                    await conn.stop()
