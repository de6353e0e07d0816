"""`appliance mcp serve --stdio`: the appliance's MCP server for clients that launch servers as
processes (desktop assistants, editors).

It serves MCP over stdin/stdout and relays each request to the running daemon's `/mcp`, as one
Streamable HTTP session with the API token (the daemon's own tools, resources and prompts, so the
two faces cannot drift apart, and sandboxes made through it are reaped when it exits, as the
session ends). Before it starts it asks the daemon for its status with the CLI's client, so a
daemon that is down or a token that is wrong is one clear line on stderr, not a broken pipe.
Results, `isError` included, pass through unchanged; the daemon's protocol errors (an unknown
tool, malformed arguments) go back as protocol errors.
"""

from __future__ import annotations

from typing import Any

import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel.server import Server
from mcp.server.stdio import stdio_server
from mcp.types import (
    CallToolRequestParams,
    CallToolResult,
    GetPromptRequestParams,
    GetPromptResult,
    ListPromptsResult,
    ListResourcesResult,
    ListResourceTemplatesResult,
    ListToolsResult,
    PaginatedRequestParams,
    ReadResourceRequestParams,
    ReadResourceResult,
)

from appliance import __version__
from appliance.client import DaemonClient, calls
from appliance.client.base import auth_headers

Ctx = ServerRequestContext[Any, Any]
READ_TIMEOUT_S = 3600.0
"""How long one relayed call may take (an agent's turn, a long run): the daemon bounds it."""


def relay_server(daemon: Client, instructions: str | None) -> Server[Any]:
    """A low-level server whose every request is the same request to `daemon`."""

    async def list_tools(ctx: Ctx, params: PaginatedRequestParams | None) -> ListToolsResult:
        return await daemon.list_tools()

    async def call_tool(ctx: Ctx, params: CallToolRequestParams) -> CallToolResult:
        return await daemon.call_tool(params.name, params.arguments)

    async def list_resources(
        ctx: Ctx, params: PaginatedRequestParams | None
    ) -> ListResourcesResult:
        return await daemon.list_resources()

    async def list_templates(
        ctx: Ctx, params: PaginatedRequestParams | None
    ) -> ListResourceTemplatesResult:
        return await daemon.list_resource_templates()

    async def read_resource(ctx: Ctx, params: ReadResourceRequestParams) -> ReadResourceResult:
        return await daemon.read_resource(str(params.uri))

    async def list_prompts(ctx: Ctx, params: PaginatedRequestParams | None) -> ListPromptsResult:
        return await daemon.list_prompts()

    async def get_prompt(ctx: Ctx, params: GetPromptRequestParams) -> GetPromptResult:
        return await daemon.get_prompt(params.name, params.arguments)

    return Server(
        "appliance",
        version=__version__,
        title="Serverless AI Appliance",
        instructions=instructions,
        on_list_tools=list_tools,
        on_call_tool=call_tool,
        on_list_resources=list_resources,
        on_list_resource_templates=list_templates,
        on_read_resource=read_resource,
        on_list_prompts=list_prompts,
        on_get_prompt=get_prompt,
    )


def check_daemon(url: str, token: str | None) -> None:
    """Raise the client's clear error when the daemon is down or refuses the token."""
    client = DaemonClient(url, token, timeout=10.0)
    try:
        client.call(calls.status())
    finally:
        client.close()


async def serve_stdio(url: str, token: str | None) -> None:
    """Serve MCP on stdin/stdout, relaying to the daemon at `url`, until stdin closes."""
    http = httpx2.AsyncClient(
        headers=auth_headers(token), timeout=httpx2.Timeout(30.0, read=READ_TIMEOUT_S)
    )
    transport = streamable_http_client(url.rstrip("/") + "/mcp", http_client=http)
    async with (
        http,
        Client(transport, mode="legacy", read_timeout_seconds=READ_TIMEOUT_S) as daemon,
    ):
        server = relay_server(daemon, daemon.instructions)
        async with stdio_server() as (read, write):
            await server.run(read, write, server.create_initialization_options())
