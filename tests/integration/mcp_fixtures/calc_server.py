"""A small MCP server written with the official SDK, for the agent-as-MCP-client tests.

Run as a script it serves stdio (the appliance starts it inside a sandbox); `http_app()` is the
same server as a Streamable HTTP ASGI app. Tools: `add`, `look_around` (which host files and
what network it can see) and `nap` (sleeps), `crash` (the process exits mid-call), `grow`
(adds `multiply` and sends tools/list_changed).
"""

from __future__ import annotations

import os
import socket
import sys
from typing import Any

from mcp.server.mcpserver import Context, MCPServer

server = MCPServer("calc")


@server.tool()
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


@server.tool()
def look_around(paths: list[str]) -> dict[str, Any]:
    """Report which of the given paths exist (and of those in $LOOK_PATHS, one a line), the
    network interfaces and whether a TCP connection to 1.1.1.1:53 can be made."""
    extra = [p for p in os.environ.get("LOOK_PATHS", "").splitlines() if p]
    seen = {p: os.path.exists(p) for p in [*paths, *extra]}
    interfaces = sorted(name for _, name in socket.if_nameindex())
    try:
        with socket.create_connection(("1.1.1.1", 53), timeout=2):
            reached = True
    except OSError:
        reached = False
    return {
        "exists": seen,
        "interfaces": interfaces,
        "reached_internet": reached,
        "uid": os.getuid(),
    }


@server.tool()
async def nap(seconds: float) -> str:
    """Sleep, then answer."""
    import asyncio

    await asyncio.sleep(seconds)
    return "rested"


@server.tool()
def crash(code: int = 3) -> str:
    """Exit the server process at once, mid-call."""
    sys.stdout.flush()
    os._exit(code)


def multiply(a: int, b: int) -> int:
    """Multiply two integers (offered once `grow` was called)."""
    return a * b


@server.tool()
async def grow(ctx: Context) -> str:
    """Add the `multiply` tool and tell the client its tool list changed."""
    server.add_tool(multiply)
    await ctx.session.send_tool_list_changed()
    return "multiply is offered now"


def http_app() -> Any:
    return server.streamable_http_app()


if __name__ == "__main__":
    server.run()
