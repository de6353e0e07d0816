"""The appliance's MCP server: its tools, resources and prompts, and the Streamable HTTP session
manager that `appliance.api.mcp` mounts at `/mcp`.

`ApplianceMCP` is the SDK's `MCPServer` with the tools of `appliance.mcp.tools` and two things
that change while the daemon runs, so they are read from the services on each request rather
than registered once:

- resources: each session's transcript (`appliance://sessions/{id}`, JSON) and each file of each
  stateful sandbox's workspace (`appliance://sandboxes/{id}/files/{path}`), listed and read;
- prompts: one per agent, named after it, whose message is the agent's persona.

Version negotiation is the SDK's: the handshake protocols (2025-06-18, 2025-11-25, and the two
before them) through `initialize`, and 2026-07-28 as self-contained requests. The SDK's own
Host/Origin checks and body cap are off: the daemon's browser boundary and token check
(appliance.api) sit in front of `/mcp` as of every route, and take their limits from the config.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any
from urllib.parse import quote, unquote

import msgspec
from mcp.server.lowlevel.helper_types import ReadResourceContents
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ResourceError, ResourceNotFoundError
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.server.transport_security import TransportSecuritySettings
from mcp.types import (
    GetPromptResult,
    Prompt,
    PromptMessage,
    Resource,
    ResourceTemplate,
    TextContent,
)

from appliance import __version__
from appliance.app import Appliance
from appliance.errors import ApplianceError
from appliance.mcp.tools import ApplianceTools

SESSION_URI = "appliance://sessions/{session_id}"
FILE_URI = "appliance://sandboxes/{sandbox_id}/files/{path}"
_SESSIONS = "appliance://sessions/"
_SANDBOXES = "appliance://sandboxes/"
MAX_LISTED = 200
"""Sessions (newest first) and sandbox files listed by resources/list; any other is still read."""

INSTRUCTIONS = (
    "The Serverless AI Appliance: run code in sandboxes (run_code, sandbox_*), ask local models "
    "(list_models, chat, embed) and talk to local agents (ask_agent). Session transcripts and "
    "sandbox files are resources; each agent's persona is a prompt."
)


class ApplianceMCP(MCPServer[Any]):
    def __init__(self, appliance: Appliance) -> None:
        super().__init__(
            name="appliance",
            title="Serverless AI Appliance",
            instructions=INSTRUCTIONS,
            version=__version__,
            log_level="WARNING",
        )
        self.appliance = appliance
        for fn in ApplianceTools(appliance).all():
            self.add_tool(fn)

    # --- resources --------------------------------------------------------------------------------

    async def list_resources(self) -> list[Resource]:
        out: list[Resource] = []
        page = await self.appliance.sessions.list(limit=MAX_LISTED)
        for s in page.items:
            out.append(
                Resource(
                    uri=_SESSIONS + s.id,
                    name=f"session {s.id}",
                    title=s.title or None,
                    description="the session's transcript and tool runs",
                    mime_type="application/json",
                )
            )
        sandboxes = self.appliance.sandboxes
        for sb in sandboxes.list_sandboxes():
            try:
                files = await sandboxes.list_files(sb.id)
            except ApplianceError:
                continue  # deleted meanwhile
            for f in files:
                if f.type != "file" or len(out) >= 2 * MAX_LISTED:
                    continue
                out.append(
                    Resource(
                        uri=f"{_SANDBOXES}{sb.id}/files/{quote(f.path)}",
                        name=f"{sb.id}:{f.path}",
                        description=f"a file of sandbox {sb.id}'s workspace",
                        size=f.size,
                    )
                )
        return out

    async def list_resource_templates(self) -> list[ResourceTemplate]:
        return [
            ResourceTemplate(
                uri_template=SESSION_URI,
                name="session",
                description="a session's transcript and tool runs, as JSON",
                mime_type="application/json",
            ),
            ResourceTemplate(
                uri_template=FILE_URI,
                name="sandbox file",
                description="a file of a stateful sandbox's workspace",
            ),
        ]

    async def read_resource(
        self, uri: Any, context: Context[Any, Any] | None = None
    ) -> Iterable[ReadResourceContents]:
        text = str(uri)
        try:
            if text.startswith(_SESSIONS):
                detail = await self.appliance.sessions.get(unquote(text[len(_SESSIONS) :]))
                body = json.dumps(msgspec.to_builtins(detail), ensure_ascii=False)
                return [ReadResourceContents(content=body, mime_type="application/json")]
            if text.startswith(_SANDBOXES):
                sandbox_id, sep, path = text[len(_SANDBOXES) :].partition("/files/")
                if sep and path:
                    data = await self.appliance.sandboxes.get_file(sandbox_id, unquote(path))
                    return [ReadResourceContents(content=_text_or_bytes(data), mime_type=None)]
        except ApplianceError as exc:
            raise ResourceError(exc.message) from exc
        raise ResourceNotFoundError(
            f"unknown resource {text!r}; use {SESSION_URI} or {FILE_URI} (see resources/list)"
        )

    # --- prompts ----------------------------------------------------------------------------------

    async def list_prompts(self) -> list[Prompt]:
        page = await self.appliance.agents.list(limit=MAX_LISTED)
        return [
            Prompt(
                name=a.name,
                title=a.name,
                description=a.description or f"the persona of the agent {a.name}",
            )
            for a in page.items
        ]

    async def get_prompt(
        self,
        name: str,
        arguments: dict[str, Any] | None = None,
        context: Context[Any, Any] | None = None,
    ) -> GetPromptResult:
        try:
            agent = await self.appliance.agents.get(name)
        except ApplianceError as exc:
            raise ValueError(exc.message) from exc
        return GetPromptResult(
            description=agent.description or f"the persona of the agent {agent.name}",
            messages=[
                PromptMessage(role="user", content=TextContent(type="text", text=agent.persona))
            ],
        )


def _text_or_bytes(data: bytes) -> str | bytes:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data


def session_manager(server: ApplianceMCP) -> StreamableHTTPSessionManager:
    """Stateful Streamable HTTP (an `Mcp-Session-Id` per client, so sandboxes are reaped with it),
    answering with SSE streams as the spec prefers, the SDK's own checks left to the daemon's."""
    server.streamable_http_app(  # builds the manager; its Starlette app is not used
        transport_security=TransportSecuritySettings(enable_dns_rebinding_protection=False),
        max_request_body_size=2**62,  # the browser boundary caps bodies, from the config
    )
    return server.session_manager
