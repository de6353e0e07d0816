"""The tools agents call, and the check between a model's tool call and a tool run.

A tool is a name, a description and a JSON schema of its arguments: the model reads them in its
prompt and the worker builds the grammar that constrains a call from the schema. The agent loop
never runs a call as the model wrote it: `ToolBox.check` parses the arguments and validates them
against the schema first (jsonschema), and a call that fails, or names a tool the agent does not
have, is answered to the model as a tool error it can read and correct, never an exception.

`run_code` runs code in the session's own stateful sandbox (the agent's `sandbox` language),
created on first use and remembered in the session row, so variables and files persist from one
turn to the next. A sandbox that was reaped for idleness or lost with a daemon restart is replaced,
and the model is told its earlier state is gone.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import jsonschema
import msgspec

from appliance.errors import ApplianceError, InvalidRequest, NotFound
from appliance.models.schema_guard import check_schema
from appliance.sandbox.service import (
    CreateSandboxRequest,
    ExecRequest,
    RunResult,
    SandboxService,
)
from appliance.sessions.mcp_clients import McpClients, McpServerError, McpTool, result_text
from appliance.store import Agent, Store

log = logging.getLogger("appliance.agents")

ToolStatus = Literal["ok", "error", "timeout"]
OUTPUT_CHARS = 2000
"""Most characters of a stream a tool result hands back to the model (small contexts)."""


class ToolCallError(Exception):
    """A call the loop will not run; the message is what the model reads."""


@dataclass
class ToolOutcome:
    status: ToolStatus
    content: str
    """What the model reads as the tool's result."""
    detail: dict[str, Any] = field(default_factory=dict)
    """Structured facts for clients (the tool_result event), e.g. exit code and sandbox id."""


@dataclass
class ToolContext:
    session_id: str
    sandbox_language: str | None
    sandbox_image: str | None = None
    """The agent's `sandbox_image`: run_code's sandbox runs in that image's root."""


class Tool(Protocol):
    name: str
    description: str
    parameters: dict[str, Any]

    async def run(self, ctx: ToolContext, args: dict[str, Any]) -> ToolOutcome: ...


def _clip(text: str, limit: int = OUTPUT_CHARS) -> str:
    if len(text) <= limit:
        return text
    return (
        text[: limit // 2] + f"\n...[{len(text) - limit} characters cut]...\n" + text[-limit // 2 :]
    )


class RunCode:
    """Run a program or a cell in the session's stateful sandbox."""

    name = "run_code"
    description = (
        "Run code in a sandbox and get what it prints. Variables and files persist "
        "between calls in this conversation."
    )
    parameters: dict[str, Any] = {
        "type": "object",
        "properties": {
            "code": {"type": "string", "minLength": 1, "description": "the program to run"}
        },
        "required": ["code"],
        "additionalProperties": False,
    }

    def __init__(
        self, sandboxes: SandboxService, store: Store, default_language: str = "python"
    ) -> None:
        self.sandboxes = sandboxes
        self.store = store
        self.default_language = default_language

    async def _sandbox(self, ctx: ToolContext) -> tuple[str, bool]:
        """The session's sandbox id, and whether an earlier one was gone and had to be replaced."""
        session = await self.store.run(self.store.sessions.get, ctx.session_id)
        if session.sandbox_id:
            try:
                self.sandboxes.get(session.sandbox_id)
                return session.sandbox_id, False
            except NotFound:
                pass
        info = await self.sandboxes.create(  # from the share kept for agents
            CreateSandboxRequest(
                language=ctx.sandbox_language or self.default_language, image=ctx.sandbox_image
            ),
            owner="agent",
        )
        try:
            await self.store.run(self.store.sessions.update, ctx.session_id, sandbox_id=info.id)
        except NotFound:
            await self.sandboxes.delete(info.id)  # the session was deleted meanwhile
            raise
        return info.id, session.sandbox_id is not None

    async def run(self, ctx: ToolContext, args: dict[str, Any]) -> ToolOutcome:
        sandbox_id, replaced = await self._sandbox(ctx)
        result = await self.sandboxes.exec(sandbox_id, ExecRequest(code=args["code"]))
        return self.outcome(result, sandbox_id, replaced)

    @staticmethod
    def outcome(result: RunResult, sandbox_id: str, replaced: bool) -> ToolOutcome:
        parts = []
        if replaced:
            parts.append(
                "(the earlier sandbox had expired: this ran in a new one, earlier variables "
                "and files are gone)"
            )
        if result.stdout:
            parts.append(_clip(result.stdout.rstrip("\n")))
        if result.result is not None and result.result != "None":
            parts.append(_clip(result.result))
        if result.status != "ok":
            why = result.reason or (
                f"exit code {result.exit_code}" if result.exit_code is not None else ""
            )
            parts.append(f"{result.status}{': ' + why if why else ''}")
        if result.stderr and result.status != "ok":
            parts.append(_clip(result.stderr.rstrip("\n")))
        if result.restarted:
            parts.append(
                "(the interpreter had stopped and was restarted: earlier variables are gone)"
            )
        status: ToolStatus = (
            "ok" if result.status == "ok" else "timeout" if result.status == "timeout" else "error"
        )
        return ToolOutcome(
            status=status,
            content="\n".join(parts) or "(no output)",
            detail={
                "sandbox_id": sandbox_id,
                "status": result.status,
                "exit_code": result.exit_code,
                "stdout": result.stdout,
                "stderr": result.stderr,
                "result": result.result,
                "duration_ms": result.duration_ms,
            },
        )


class AgentTool(msgspec.Struct, omit_defaults=True, kw_only=True):
    """One tool an agent can call."""

    name: str
    """The name the model calls it by (`<server>__<tool>` for an MCP server's)."""
    source: str
    """"builtin", or "mcp:<server>"."""
    description: str = ""
    parameters: dict[str, Any] = msgspec.field(default_factory=dict)
    """The JSON schema of its arguments."""
    transport: str | None = None
    """MCP tools: "stdio" or "http"."""
    error: str | None = None
    """Why the tool is not offered (its server did not start, its schema was refused)."""


class AgentTools(msgspec.Struct, kw_only=True):
    agent: str
    items: list[AgentTool]


class ToolBox:
    """The tools the appliance offers agents, by name."""

    def __init__(self, tools: Iterable[Tool], mcp: McpClients | None = None) -> None:
        self.tools = {t.name: t for t in tools}
        self.mcp = mcp
        self._offered: dict[str, dict[str, McpTool]] = {}
        """Per session: the MCP tools its latest turn was offered, by offered name."""

    async def offer(
        self, session_id: str, agent: Agent | None
    ) -> tuple[list[str], list[dict[str, Any]] | None]:
        """The tool names a turn of `agent` may call and their definitions for the model: the
        built-in tools, then each MCP server's (started now if the session has not yet).
        McpServerError names a server that does not start."""
        names = list(agent.tools) if agent else []
        mcp_tools: dict[str, McpTool] = {}
        if agent is not None and agent.mcp_servers and self.mcp is not None:
            for t in await self.mcp.tools(session_id, agent.mcp_servers):
                try:
                    check_schema(t.parameters, f"{t.offered_name}.parameters")
                except InvalidRequest as exc:
                    log.warning("MCP tool %s is not offered: %s", t.offered_name, exc.message)
                    continue
                mcp_tools[t.offered_name] = t
        self._offered[session_id] = mcp_tools
        specs = self.specs(names) + [_definition(t) for t in mcp_tools.values()]
        return names + list(mcp_tools), specs or None

    def forget(self, session_id: str) -> None:
        self._offered.pop(session_id, None)

    async def listing(self, agent: Agent) -> list[AgentTool]:
        """Every tool `agent` can call, with its source (GET /api/agents/{id}/tools). Its MCP
        servers are started for the listing and stopped after it."""
        out = [
            AgentTool(
                name=n,
                source="builtin",
                description=self.tools[n].description if n in self.tools else "",
                parameters=self.tools[n].parameters if n in self.tools else {},
            )
            for n in agent.tools
        ]
        if self.mcp is None or not agent.mcp_servers:
            return out
        probe = f"listing-{agent.id}-{id(out)}"
        try:
            for server in agent.mcp_servers:
                source = f"mcp:{server.name}"
                try:
                    conn = await self.mcp.connection(probe, server)
                except McpServerError as exc:
                    out.append(
                        AgentTool(
                            name=f"{server.name}__*",
                            source=source,
                            transport=server.transport,
                            error=exc.message,
                        )
                    )
                    continue
                for t in conn.tools:
                    entry = AgentTool(
                        name=t.offered_name,
                        source=source,
                        transport=server.transport,
                        description=t.description,
                        parameters=t.parameters,
                    )
                    try:
                        check_schema(t.parameters, f"{t.offered_name}.parameters")
                    except InvalidRequest as exc:
                        entry.error = f"not offered: {exc.message}"
                    out.append(entry)
        finally:
            await self.mcp.stop_session(probe)
        return out

    def names(self) -> list[str]:
        return sorted(self.tools)

    def require(self, names: Iterable[str], *, param: str = "tools") -> None:
        """InvalidRequest naming the unknown tools, if any."""
        unknown = [n for n in names if n not in self.tools]
        if unknown:
            raise InvalidRequest(
                f"unknown tool{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}; "
                f"this appliance offers: {', '.join(self.names()) or 'none'}",
                param=param,
            )

    def specs(self, names: Iterable[str]) -> list[dict[str, Any]]:
        """OpenAI tool definitions of the named tools."""
        out = []
        for n in names:
            t = self.tools[n]
            out.append(
                {
                    "type": "function",
                    "function": {
                        "name": t.name,
                        "description": t.description,
                        "parameters": t.parameters,
                    },
                }
            )
        return out

    def check(
        self, allowed: Iterable[str], call: dict[str, Any], session_id: str | None = None
    ) -> tuple[str, dict[str, Any]]:
        """The tool name and parsed arguments of a model's call; ToolCallError when it must not run."""
        fn = call.get("function") or {}
        name = str(fn.get("name") or "")
        allowed = list(allowed)
        mcp_tool = self._offered.get(session_id or "", {}).get(name)
        if name not in allowed or (name not in self.tools and mcp_tool is None):
            raise ToolCallError(
                f"there is no tool named {name!r}; call one of: {', '.join(allowed)}"
            )
        raw = fn.get("arguments", "{}")
        try:
            args = json.loads(raw) if isinstance(raw, str) else raw
        except ValueError as exc:
            raise ToolCallError(
                f"the arguments are not valid JSON ({exc.args[0]}); send a JSON object"
            ) from None
        if not isinstance(args, dict):
            raise ToolCallError("the arguments must be a JSON object")
        schema = mcp_tool.parameters if mcp_tool is not None else self.tools[name].parameters
        try:
            validator = jsonschema.Draft202012Validator(schema)
            errors = sorted(validator.iter_errors(args), key=lambda e: list(e.path))
        except jsonschema.exceptions.SchemaError as exc:  # a server's schema that is not one
            raise ToolCallError(f"{name} has an invalid schema: {exc.message}") from None
        if errors:
            where = "/".join(str(p) for p in errors[0].path) or "arguments"
            raise ToolCallError(f"invalid arguments for {name} at {where}: {errors[0].message}")
        return name, args

    async def run(self, ctx: ToolContext, name: str, args: dict[str, Any]) -> ToolOutcome:
        """Run a checked call; an appliance error (no sandboxes, limits) becomes a tool error."""
        mcp_tool = self._offered.get(ctx.session_id, {}).get(name)
        if mcp_tool is not None:
            return await self._run_mcp(ctx, mcp_tool, args)
        try:
            return await self.tools[name].run(ctx, args)
        except ApplianceError as exc:
            log.info("tool %s failed in session %s: %s", name, ctx.session_id, exc.message)
            return ToolOutcome(
                status="error", content=f"error: {exc.message}", detail={"code": exc.code}
            )

    async def _run_mcp(self, ctx: ToolContext, tool: McpTool, args: dict[str, Any]) -> ToolOutcome:
        """Call an MCP server's tool; a server that is gone or slow answers with a tool error."""
        assert self.mcp is not None
        detail: dict[str, Any] = {"source": f"mcp:{tool.server}", "tool": tool.name}
        conn = self.mcp.running(ctx.session_id, tool.server)
        try:
            if conn is None or not conn.alive:
                spec = conn.spec if conn is not None else None
                if spec is None:
                    raise McpServerError(f"MCP server {tool.server!r} is not running")
                conn = await self.mcp.connection(ctx.session_id, spec)
            result = await conn.call(tool, args)
        except McpServerError as exc:
            log.info("MCP tool %s failed in session %s: %s", tool.offered_name, ctx.session_id, exc)
            return ToolOutcome(
                status="error", content=f"error: {exc.message}", detail={**detail, "code": exc.code}
            )
        except TimeoutError as exc:
            return ToolOutcome(status="timeout", content=f"timeout: {exc}", detail=detail)
        except Exception as exc:
            return ToolOutcome(status="error", content=f"error: {exc}", detail=detail)
        text, facts = result_text(result)
        return ToolOutcome(
            status="error" if result.is_error else "ok",
            content=_clip(text),
            detail={**detail, **facts},
        )


def _definition(t: McpTool) -> dict[str, Any]:
    return {
        "type": "function",
        "function": {
            "name": t.offered_name,
            "description": t.description,
            "parameters": t.parameters,
        },
    }


def mcp_choices(agent: Agent, tool_choice: Any) -> list[dict[str, Any]]:
    """Stand-in definitions of the tools an agent's MCP servers may offer, for checking a
    `tool_choice` before the servers run: `<server>__<tool>` of each allowlisted tool, and of any
    tool of a server without an allowlist (the server's listing is checked when the turn starts)."""
    chosen = ""
    if isinstance(tool_choice, dict):
        chosen = str((tool_choice.get("function") or {}).get("name") or tool_choice.get("name"))
    out = []
    for s in agent.mcp_servers:
        tail = chosen.removeprefix(f"{s.name}__") if chosen.startswith(f"{s.name}__") else "*"
        names = s.tools if s.tools is not None else [tail]
        out += [
            {"type": "function", "function": {"name": f"{s.name}__{n}", "parameters": {}}}
            for n in names
        ]
    return out
