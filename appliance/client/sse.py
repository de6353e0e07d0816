"""Reading the daemon's server-sent events, decoded by `httpx-sse`, into typed records.

Each reader takes one event and says what it means, so the blocking and the async client loop
over their own iterators and share every decision: a chat chunk gives its text (or the end, or
an error), a session turn gives `TurnEvent`s until `done` or `error`, `/api/events` gives
`DaemonEvent`s (its comments, the keep-alives, never reach us: httpx-sse drops them).
"""

from __future__ import annotations

import json
from typing import Any

from httpx_sse import ServerSentEvent

from appliance.client.errors import ClientError
from appliance.client.records import DaemonEvent, TurnEvent

DONE = "[DONE]"


def chat_piece(sse: ServerSentEvent) -> str | None:
    """The text a `/v1/chat/completions` chunk adds ("" for none); None at `[DONE]`."""
    if sse.data == DONE:
        return None
    chunk = json.loads(sse.data)
    err = chunk.get("error")
    if isinstance(err, dict):
        raise ClientError(str(err.get("message")), code=err.get("code"))
    return "".join(
        (choice.get("delta") or {}).get("content") or "" for choice in chunk.get("choices") or []
    )


def turn_event(sse: ServerSentEvent) -> TurnEvent | None:
    """One event of a session turn; None at `[DONE]`."""
    if sse.data == DONE:
        return None
    try:
        payload: Any = json.loads(sse.data)
    except ValueError:
        payload = {"text": sse.data}
    return TurnEvent.from_frame(sse.event, payload)


def ends_turn(event: TurnEvent) -> bool:
    return event.kind in ("done", "error")


def daemon_event(sse: ServerSentEvent) -> DaemonEvent | None:
    """One item of `/api/events`; None for data that is not an event."""
    try:
        return DaemonEvent.from_json(json.loads(sse.data))
    except ValueError:
        return None
