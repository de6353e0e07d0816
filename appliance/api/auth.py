"""Bearer-token check in front of every route (the policy is appliance.access).

This is plain ASGI around the whole Litestar handler, before routing, so it covers every route
there is or will be (OpenAI, MCP, mounted apps) and answers unknown paths with 401 rather than
revealing which routes exist. The refusal is an OpenAI error body, which the OpenAI SDKs turn into
`AuthenticationError`. The Authorization header is read here and nowhere else.
"""

from __future__ import annotations

from typing import Any

from appliance.access import ApiAccess
from appliance.api.errors import send_error
from appliance.errors import ApplianceError
from appliance.store import Store

ASGIApp = Any


def _header(scope: dict[str, Any], name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return bytes(value).decode("latin-1")
    return None


class BearerAuth:
    def __init__(self, app: ASGIApp, access: ApiAccess, store: Store) -> None:
        self.app = app
        self.access = access
        self.store = store

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] not in ("http", "websocket") or not self.access.needs_check(scope["path"]):
            await self.app(scope, receive, send)
            return
        refusal: ApplianceError | None
        try:
            refusal = await self.store.run(self.access.check, _header(scope, b"authorization"))
        except ApplianceError as exc:  # the store is closing (shutdown): refuse, do not crash
            refusal = exc
        if refusal is None:
            await self.app(scope, receive, send)
        elif scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
        else:
            await send_error(send, refusal)
