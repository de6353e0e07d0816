"""Every SSE stream is framed by appliance.api.sse: the bytes stay the ones OpenAI's SDKs and our
clients read (`\\n` line ends, not Litestar's default `\\r\\n`)."""

from __future__ import annotations

from collections.abc import AsyncIterator

from litestar.response.sse import ServerSentEventMessage

from appliance.api import sse


def test_events_are_framed_with_bare_newlines() -> None:
    assert sse.event({"a": 1}).encode() == b'data: {"a":1}\n\n'
    assert sse.event("[DONE]").encode() == b"data: [DONE]\n\n"
    assert sse.event({"type": "x"}, name="response.created").encode() == (
        b'event: response.created\ndata: {"type":"x"}\n\n'
    )
    assert sse.event({"seq": 7}, event_id=7).encode() == b'id: 7\ndata: {"seq":7}\n\n'
    assert sse.comment("ping").encode() == b": ping\n\n"


def test_a_stream_answers_as_event_stream_without_caching() -> None:
    async def nothing() -> AsyncIterator[ServerSentEventMessage]:
        return
        yield

    response = sse.stream(nothing())
    assert response.media_type == "text/event-stream"
    assert (
        response.headers["Cache-Control"] == "no-cache"
        and response.headers["X-Accel-Buffering"] == "no"
    )
