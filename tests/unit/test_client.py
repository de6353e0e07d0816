"""The one daemon client (appliance.client): both its blocking and its async face read the daemon's
errors and server-sent events the same way, from the bytes the daemon sends."""

from __future__ import annotations

import json

import httpx
import pytest

from appliance.client import (
    ApplianceClient,
    ClientError,
    DaemonClient,
    DaemonUnauthorized,
    NotAvailable,
    calls,
)
from appliance.client.errors import DaemonUnreachable
from appliance.client.format import duration_ms, size

TURN = (
    ": connected\n\n"
    'event: message\ndata: {"message": {"role": "user", "content": "hi"}}\n\n'
    'event: token\ndata: {"text": "Hel"}\n\n'
    'event: token\ndata: {"text": "lo"}\n\n'
    'event: tool_call\ndata: {"id": "c1", "name": "run_code", "arguments": "{\\"code\\": \\"1\\"}"}\n\n'
    'event: done\ndata: {"usage": {"completion_tokens": 2}, "timings": {}}\n\n'
    'event: token\ndata: {"text": "after done"}\n\n'
)

CHAT = (
    'data: {"choices": [{"delta": {"role": "assistant"}}]}\n\n'
    'data: {"choices": [{"delta": {"content": "Hi"}}]}\n\n'
    'data: {"choices": [{"delta": {"content": " there"}}]}\n\n'
    "data: [DONE]\n\n"
)


def _daemon(request: httpx.Request) -> httpx.Response:
    path = request.url.path
    sse = {"content-type": "text/event-stream"}
    if path == "/api/models/nope":
        return httpx.Response(
            404,
            json={
                "error": {
                    "message": "no model 'nope'; see GET /api/models",
                    "type": "invalid_request_error",
                    "code": "not_found",
                }
            },
        )
    if path == "/api/detail":
        return httpx.Response(400, json={"detail": "bad query"})
    if path == "/api/plain":
        return httpx.Response(502, text="upstream broke\n")
    if path == "/api/secret":
        return httpx.Response(
            401, json={"error": {"message": "a token is required", "code": "unauthorized"}}
        )
    if path == "/api/sessions/s1/messages":
        assert json.loads(request.content) == {"content": "hi"}
        return httpx.Response(200, headers=sse, text=TURN)
    if path == "/v1/chat/completions" and json.loads(request.content)["model"] == "crashing":
        return httpx.Response(
            200, headers=sse, text='data: {"error": {"message": "model crashed", "code": "x"}}\n\n'
        )
    if path == "/v1/chat/completions":
        return httpx.Response(200, headers=sse, text=CHAT)
    if path == "/api/models":
        return httpx.Response(
            200, json=[{"id": "tiny", "state": "ready", "memory_bytes": 33 * 2**20}]
        )
    return httpx.Response(404, json={"detail": "Not Found"})


@pytest.fixture
def sync_client() -> DaemonClient:
    return DaemonClient("http://box", transport=httpx.MockTransport(_daemon))


def test_the_daemons_error_body_becomes_one_client_error_with_its_message(
    sync_client: DaemonClient,
) -> None:
    with pytest.raises(ClientError) as caught:
        sync_client.call(calls.model("nope"))
    assert (caught.value.status, caught.value.daemon_code) == (404, "not_found")
    assert caught.value.message == "no model 'nope'; see GET /api/models"
    assert not isinstance(caught.value, NotAvailable), "a 404 with a code is the daemon's answer"
    with pytest.raises(ClientError, match=r"^bad query$"):
        sync_client.get("/api/detail")
    with pytest.raises(ClientError, match=r"^upstream broke$"):
        sync_client.get("/api/plain")
    with pytest.raises(DaemonUnauthorized, match="--token"):
        sync_client.get("/api/secret")
    with pytest.raises(NotAvailable, match="GET /api/elsewhere is not available on this daemon"):
        sync_client.get("/api/elsewhere")


def test_a_daemon_that_does_not_answer_says_how_to_start_one() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    client = DaemonClient("http://box", transport=httpx.MockTransport(refuse))
    with pytest.raises(
        DaemonUnreachable, match=r"cannot reach the appliance at http://box.*appliance serve"
    ):
        client.get("/api/health")
    with pytest.raises(DaemonUnreachable):
        list(client.turn("s1", "hi"))


def test_a_turn_streams_typed_events_up_to_done(sync_client: DaemonClient) -> None:
    events = list(sync_client.turn("s1", "hi"))
    assert [e.kind for e in events] == ["message", "token", "token", "tool_call", "done"]
    assert "".join(e.text for e in events if e.kind == "token") == "Hello"
    call = events[3].tool_call
    assert call is not None and (call.name, json.loads(call.arguments)) == (
        "run_code",
        {"code": "1"},
    )
    assert events[4].data["usage"] == {"completion_tokens": 2}


def test_typed_records_from_the_blocking_client(sync_client: DaemonClient) -> None:
    [tiny] = sync_client.call(calls.models())
    assert (tiny.id, tiny.state, tiny.resident, size(tiny.memory_bytes)) == (
        "tiny",
        "ready",
        True,
        "33.0 MiB",
    )


async def test_the_async_client_reads_the_same_streams_and_errors() -> None:
    client = ApplianceClient("http://box", transport=httpx.MockTransport(_daemon))
    try:
        assert [
            p async for p in client.chat_stream("tiny", [{"role": "user", "content": "hi"}])
        ] == ["Hi", " there"]
        assert [e.kind async for e in client.send_message("s1", "hi")][-1] == "done"
        with pytest.raises(ClientError, match="no model 'nope'"):
            await client.model("nope")
        assert client.state.kind == "connected"
        with pytest.raises(DaemonUnauthorized):
            await client.call(calls.Call("GET", "/api/secret", lambda body: body))
        assert client.state.kind == "unauthorized"
    finally:
        await client.aclose()


async def test_an_error_inside_a_chat_stream_is_raised_with_the_daemons_message() -> None:
    client = ApplianceClient("http://box", transport=httpx.MockTransport(_daemon))
    try:
        with pytest.raises(ClientError, match="model crashed"):
            [p async for p in client.chat_stream("crashing", [])]
    finally:
        await client.aclose()


def test_durations_read_the_same_everywhere() -> None:
    assert (duration_ms(None), duration_ms(12.4), duration_ms(3400), duration_ms(90_000)) == (
        "-",
        "12 ms",
        "3.4 s",
        "1.5 min",
    )
