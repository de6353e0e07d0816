"""Server-sent events in the shapes OpenAI clients read.

Chat and completion chunks are bare `data: {json}` lines ending with `data: [DONE]`; the Responses
API names each event after its `type` (`event: response.output_text.delta`) and sends no [DONE].
An error after the stream started is one last event carrying OpenAI's error body.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import msgspec
from litestar.response import Stream

from appliance.api.errors import error_body
from appliance.errors import ApplianceError

_enc = msgspec.json.Encoder()
log = logging.getLogger("appliance.api")


async def _frames(source: AsyncIterator[dict[str, Any]], done: bool, named: bool) -> AsyncIterator[bytes]:
    try:
        async for item in source:
            head = b"event: " + str(item["type"]).encode() + b"\n" if named else b""
            yield head + b"data: " + _enc.encode(item) + b"\n\n"
    except Exception as exc:  # the status line is gone: the error becomes the stream's last event
        if not isinstance(exc, ApplianceError):
            log.exception("a stream failed", exc_info=exc)
            exc = ApplianceError(f"internal error: {exc!r}. See the daemon log.")
        head = b"event: error\n" if named else b""
        yield head + b"data: " + _enc.encode(error_body(exc.message, exc.type, exc.code, exc.param)) + b"\n\n"
    if done:
        yield b"data: [DONE]\n\n"


def sse(source: AsyncIterator[dict[str, Any]], *, done: bool = True, named: bool = False,
        headers: dict[str, str] | None = None) -> Stream:
    """`named`: each item has a `type`, sent as the event's name (the Responses API's shape)."""
    return Stream(
        _frames(source, done, named),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no", **(headers or {})},
    )
