"""Server-sent events in the shape OpenAI clients read: `data: {json}` lines, then `data: [DONE]`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import msgspec
from litestar.response import Stream

from appliance.api.errors import error_body
from appliance.errors import ApplianceError

_enc = msgspec.json.Encoder()


async def _frames(source: AsyncIterator[dict[str, Any]], done: bool) -> AsyncIterator[bytes]:
    try:
        async for item in source:
            yield b"data: " + _enc.encode(item) + b"\n\n"
    except ApplianceError as exc:
        yield b"data: " + _enc.encode(error_body(exc.message, exc.type, exc.code, exc.param)) + b"\n\n"
    if done:
        yield b"data: [DONE]\n\n"


def sse(source: AsyncIterator[dict[str, Any]], *, done: bool = True, headers: dict[str, str] | None = None) -> Stream:
    return Stream(
        _frames(source, done),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no", **(headers or {})},
    )
