"""`ApplianceClient` against a real daemon: typed answers, errors that say which kind of trouble
it is, and the connection state it reports to the console."""

from __future__ import annotations

import asyncio

import pytest

from appliance.client import ApplianceClient
from appliance.client.calls import Call
from appliance.client.errors import ClientError, DaemonUnreachable, NotAvailable
from appliance.client.records import ConnectionState, DaemonEvent, StreamStatus
from tests.integration.daemon import Daemon, free_port


async def test_typed_answers_and_the_connection_state(live_daemon: Daemon) -> None:
    seen: list[ConnectionState] = []
    client = ApplianceClient(live_daemon.url)
    client.on_connection = seen.append
    try:
        health = await client.health()
        assert health.status == "ok"
        models = {m.id: m for m in await client.models()}
        assert models["tiny"].context_size == 512 and models["tiny"].kind == "chat"
        status = await client.status()
        assert "tiny" in {m.id for m in status.models}
        assert [s.kind for s in seen] == ["connected"], "reported once, on the first answer"
    finally:
        await client.aclose()


async def test_a_missing_route_is_not_available_and_a_missing_model_is_an_error(
    live_daemon: Daemon,
) -> None:
    client = ApplianceClient(live_daemon.url)
    try:
        with pytest.raises(NotAvailable, match="not available on this daemon"):
            await client.call(Call("GET", "/api/no-such-route", lambda body: body))
        with pytest.raises(ClientError) as caught:
            await client.model("no-such-model")
        assert not isinstance(caught.value, NotAvailable)
        assert caught.value.status == 404 and "no-such-model" in caught.value.message
    finally:
        await client.aclose()


async def test_nothing_listening_is_unreachable_with_what_to_do() -> None:
    seen: list[ConnectionState] = []
    client = ApplianceClient(f"http://127.0.0.1:{free_port()}")
    client.on_connection = seen.append
    try:
        with pytest.raises(DaemonUnreachable, match="appliance serve"):
            await client.status()
        assert [s.kind for s in seen] == ["unreachable"]
    finally:
        await client.aclose()


async def test_events_stream_goes_live_and_carries_model_events(live_daemon: Daemon) -> None:
    client = ApplianceClient(live_daemon.url)
    try:
        await client.unload_model("tiny")  # whatever an earlier test left, a load now changes state
        stream = client.events()
        first = await anext(stream)
        assert first == StreamStatus("live")
        loaded = await client.load_model("tiny")
        assert loaded.state == "ready"
        states = []
        async with asyncio.timeout(30):
            async for item in stream:
                assert isinstance(item, DaemonEvent)
                if item.type == "model.state" and item.data.get("model") == "tiny":
                    states.append(item.data["state"])
                    if item.data["state"] == "ready":
                        break
        assert states[-1] == "ready" and client.last_event_seq > 0
        await stream.aclose()
        await client.unload_model("tiny")
    finally:
        await client.aclose()
