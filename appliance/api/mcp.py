"""`/mcp`: the appliance's MCP server (appliance.mcp) mounted as an ASGI app.

The mount is a Litestar route like any other, so the browser boundary (Host, Origin, body caps)
and the token check in front of the whole app cover it; its POST bodies get the run class cap,
since `run_code` carries files as base64 like `POST /api/run`. The SDK's session manager needs a
task group for the app's lifetime: `mcp_lifespan` runs it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from litestar import Litestar, asgi
from litestar.handlers import ASGIRouteHandler
from litestar.types import Receive, Scope, Send

from appliance.app import Appliance
from appliance.mcp.server import ApplianceMCP, session_manager

MCP_PATH = "/mcp"


def mcp_mount(appliance: Appliance) -> tuple[ASGIRouteHandler, Any]:
    """The route handler for `/mcp` and the lifespan that runs its session manager."""
    manager = session_manager(ApplianceMCP(appliance))

    # the scope is shared, not copied, so the route label reaches the request telemetry around it
    @asgi(MCP_PATH, is_mount=True, copy_scope=False, opt={"body": "run"})
    async def mcp(scope: Scope, receive: Receive, send: Send) -> None:
        scope["path_template"] = MCP_PATH
        await manager.handle_request(scope, receive, send)  # type: ignore[arg-type]

    @asynccontextmanager
    async def mcp_lifespan(_: Litestar) -> AsyncIterator[None]:
        async with manager.run():
            yield

    return mcp, mcp_lifespan
