"""The app's Request class: a JSON body the decoder cannot take is the client's error, a 400.

msgspec decodes nested JSON with the interpreter's stack and raises RecursionError (not a
DecodeError, which Litestar turns into a 400) past about a thousand levels, so a body of 5000 `[`
was a 500. The body size is bounded before this (appliance.api.boundary); this bounds the nesting.
"""

from __future__ import annotations

from typing import Any

from litestar import Request

from appliance.errors import InvalidRequest


class ApplianceRequest(Request[Any, Any, Any]):
    async def json(self) -> Any:
        try:
            return await super().json()
        except RecursionError:
            raise InvalidRequest(
                "the JSON body is nested too deeply to decode (more than about 900 levels of "
                "arrays or objects); flatten it"
            ) from None
