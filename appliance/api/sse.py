"""Server-sent events: every SSE stream of the API, framed by Litestar's `ServerSentEvent`.

Three shapes ride on it. Chat and completion chunks are bare `data: {json}` events ending with
`data: [DONE]`; the Responses API names each event after its `type` (`event:
response.output_text.delta`) and sends no [DONE]; a session turn names its events (`token`,
`tool_call`, ...), and `/api/events` gives each an `id:` (its sequence number, for
`Last-Event-ID`) and sends `: ping` comments while idle. An error after the stream started is one
last event carrying OpenAI's error body.

Each event is a `ServerSentEventMessage` with `\\n` as its line separator (Litestar's default is
`\\r\\n`), so the bytes on the wire stay the ones OpenAI's SDKs and our clients have always read.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import msgspec
from litestar.response import ServerSentEvent
from litestar.response.sse import ServerSentEventMessage

from appliance.api.errors import error_body
from appliance.errors import ApplianceError

_enc = msgspec.json.Encoder()
log = logging.getLogger("appliance.api")

HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def event(
    data: Any, *, name: str | None = None, event_id: int | str | None = None
) -> ServerSentEventMessage:
    """One event whose `data:` is `data` as JSON (or a str as it is, for `[DONE]`)."""
    text = data if isinstance(data, str) else _enc.encode(data).decode()
    return ServerSentEventMessage(data=text, event=name, id=event_id, sep="\n")


def comment(text: str) -> ServerSentEventMessage:
    """A comment line (`: text`), which clients skip: a keep-alive."""
    return ServerSentEventMessage(data=None, comment=text, sep="\n")


def stream(
    events: AsyncIterator[ServerSentEventMessage], headers: dict[str, str] | None = None
) -> ServerSentEvent:
    """The response that sends `events` as they come."""
    return ServerSentEvent(events, headers={**HEADERS, **(headers or {})})


async def _openai_events(
    source: AsyncIterator[dict[str, Any] | msgspec.Struct], done: bool, named: bool
) -> AsyncIterator[ServerSentEventMessage]:
    try:
        async for item in source:
            name = str(item["type"]) if named and isinstance(item, dict) else None
            yield event(item, name=name)
    except Exception as exc:  # the status line is gone: the error becomes the stream's last event
        if not isinstance(exc, ApplianceError):
            log.exception("a stream failed", exc_info=exc)
            exc = ApplianceError(f"internal error: {exc!r}. See the daemon log.")
        yield event(
            error_body(exc.message, exc.type, exc.code, exc.param), name="error" if named else None
        )
    if done:
        yield event("[DONE]")


def sse(
    source: AsyncIterator[dict[str, Any] | msgspec.Struct],
    *,
    done: bool = True,
    named: bool = False,
    headers: dict[str, str] | None = None,
) -> ServerSentEvent:
    """OpenAI's stream of `source`'s chunks (structs, or plain data). `named`: each item is a
    dict with a `type`, sent as the event's name (the Responses API's shape)."""
    return stream(_openai_events(source, done, named), headers)
