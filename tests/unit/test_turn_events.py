"""A turn's event queue is bounded: a slow reader holds the turn back, a gone one releases it."""

from __future__ import annotations

import asyncio

import pytest

from appliance.sessions.turn import Turn, TurnEvent, TurnSpec
from appliance.store import Message


def new_turn(*, window: int, stall_s: float = 60.0) -> Turn:
    user = Message(
        id="m1",
        session_id="s1",
        seq=1,
        role="user",
        content="hi",
        tool_calls=None,
        tool_call_id=None,
        name=None,
        created=0.0,
        tokens=None,
        meta={},
    )
    return Turn(
        TurnSpec(session_id="s1", model_id="m", agent=None, params={}),
        user,
        window=window,
        stall_s=stall_s,
    )


def run(turn: Turn, tokens: int) -> asyncio.Task[None]:
    """Emit `tokens` token events the way the agent loop does, then settle."""

    async def produce() -> None:
        for i in range(tokens):
            await turn.emit("token", {"text": str(i)})
        await turn.emit("done", {})

    turn.task = asyncio.create_task(produce())
    turn.task.add_done_callback(lambda _t: turn.close())
    return turn.task


async def settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


async def test_the_turn_waits_for_a_reader_that_is_a_window_behind() -> None:
    turn = new_turn(window=4)
    task = run(turn, tokens=100)
    await settle()
    assert not task.done() and turn.queue.full(), "the turn went on past the window"
    stream = turn.events()
    first = [await anext(stream) for _ in range(3)]
    await settle()
    assert turn.queue.full() and not task.done(), "each event read lets one more in, no more"
    rest = [ev async for ev in stream]
    assert [e.event for e in first + rest] == ["message", *["token"] * 100, "done"]
    assert [e.data["text"] for e in first[1:] + rest[:-1]] == [str(i) for i in range(100)]
    assert task.done() and not task.cancelled()


async def test_the_stream_ends_after_every_queued_event_when_the_turn_settles_on_a_full_queue() -> (
    None
):
    turn = new_turn(window=3)
    task = run(turn, tokens=1)  # message, token, done: exactly a window, no room for the end mark
    await settle()
    assert task.done() and turn.queue.full()
    assert [e.event for e in [ev async for ev in turn.events()]] == ["message", "token", "done"]


async def test_a_reader_that_leaves_cancels_the_turn_blocked_on_a_full_queue() -> None:
    turn = new_turn(window=2)
    task = run(turn, tokens=100)
    stream = turn.events()
    assert (await anext(stream)).event == "message"
    await settle()
    await stream.aclose()
    await asyncio.wait_for(asyncio.wait([task]), 5)
    assert task.cancelled()
    await asyncio.wait_for(turn.emit("error", {}), 1)  # settling after the reader left never blocks


async def test_a_reader_that_stalls_cancels_the_turn() -> None:
    turn = new_turn(window=2, stall_s=0.05)
    task = run(turn, tokens=100)
    await asyncio.wait_for(asyncio.wait([task]), 5)
    assert task.cancelled()
    events: list[TurnEvent] = [ev async for ev in turn.events()]
    assert [e.event for e in events] == ["message", "token"]


@pytest.mark.parametrize("window", [1, 64])
async def test_a_prompt_reader_gets_every_event_in_order(window: int) -> None:
    turn = new_turn(window=window)
    run(turn, tokens=10)
    events = [ev async for ev in turn.events()]
    assert [e.event for e in events] == ["message", *["token"] * 10, "done"]
