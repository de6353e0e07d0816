"""The agent loop over a real store with a scripted model: steps, tool errors, limits, cancellation.

The model is a fake that plays back replies (so every branch of the loop is reached on purpose);
the store is the real SQLite one, because what the loop must guarantee is what ends up committed.
The real model drives the loop in test_agents_api.py.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from appliance.errors import ModelUnavailable
from appliance.models.worker import protocol as p
from appliance.sessions.model_call import CallResult
from appliance.sessions.tools import ToolBox, ToolContext, ToolOutcome
from appliance.sessions.turn import AgentLoop, Turn, TurnEvent, TurnSpec
from appliance.store import AgentSpec, Store


class Slow:
    name = "slow"
    description = "takes its time"
    parameters: dict[str, Any] = {
        "type": "object",
        "properties": {"n": {"type": "integer"}},
        "required": ["n"],
    }

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.delay = 0.0

    async def run(self, ctx: ToolContext, args: dict[str, Any]) -> ToolOutcome:
        self.started.set()
        await asyncio.sleep(self.delay)
        return ToolOutcome(status="ok", content=str(args["n"] * 2))


def tool_call(name: str, args: Any, cid: str = "call_1") -> p.ToolCall:
    return p.ToolCall(
        id=cid,
        function=p.FunctionCall(
            name=name, arguments=args if isinstance(args, str) else json.dumps(args)
        ),
    )


def reply(
    text: str | None = None, calls: list[p.ToolCall] | None = None, tools: bool = True
) -> p.GenerateResult:
    """What the worker answers: with tools the reply is parsed whole (content, tool_calls)."""
    r = p.GenerateResult(
        text=text or "",
        finish_reason="tool_calls" if calls else "stop",
        usage=p.Usage(prompt_tokens=10, completion_tokens=3, total_tokens=13, cached_tokens=4),
        timings=p.Timings(prefill_ms=1.0, decode_ms=1.0),
    )
    if tools:
        r.content, r.tool_calls = (None, calls) if calls else (text, [])
    return r


class ScriptedModel:
    def __init__(self, replies: list[p.GenerateResult | Callable[[], Any]]) -> None:
        self.replies = list(replies)
        self.calls: list[dict[str, Any]] = []

    async def call(
        self,
        session_id: str,
        model_id: str,
        *,
        persona: str | None,
        params: dict[str, Any],
        tools: list[dict[str, Any]] | None = None,
        tool_choice: Any = None,
        on_delta: Any = None,
        on_marker: Any = None,
    ) -> CallResult:
        self.calls.append(
            {
                "tools": [t["function"]["name"] for t in tools or []],
                "tool_choice": tool_choice,
                "persona": persona,
            }
        )
        r = self.replies.pop(0)
        if callable(r):
            r = await r()
        if not tools and on_delta is not None:
            await on_delta(r.text)
        return CallResult(
            result=r, timings={"prefill_ms": 1.0, "decode_ms": 1.0, "kv_restored": False}
        )


class NoKv:
    def turn_started(self, session_id: str) -> None: ...

    def turn_ended(self, session_id: str) -> None: ...


@pytest.fixture
def store(tmp_path: Path) -> AsyncIterator[Store]:
    with Store(tmp_path) as s:
        yield s


async def start(
    store: Store, model: ScriptedModel, tool: Slow, *, max_steps: int = 4, tool_choice: Any = None
) -> tuple[Turn, asyncio.Event]:
    agent = await store.run(
        store.agents.create, AgentSpec(name="calc", model="m", persona="Be exact.", tools=["slow"])
    )
    session = await store.run(store.sessions.create, agent.id)
    user = await store.run(store.messages.append, session.id, "user", "double 21")
    released = asyncio.Event()
    turn = Turn(
        TurnSpec(
            session_id=session.id,
            model_id="m",
            agent=agent,
            params={},
            tool_choice=tool_choice,
            max_steps=max_steps,
        ),
        user,
    )
    AgentLoop(store, model, ToolBox([tool]), NoKv()).start(turn, released.set)  # type: ignore[arg-type]
    return turn, released


async def events(turn: Turn) -> list[TurnEvent]:
    return [ev async for ev in turn.events()]


async def test_a_tool_call_runs_and_its_result_is_fed_back_then_the_turn_ends_with_a_message(
    store: Store,
) -> None:
    model = ScriptedModel([reply(calls=[tool_call("slow", {"n": 21})]), reply("It is 42.")])
    turn, released = await start(store, model, Slow(), tool_choice="required")
    evs = await events(turn)
    assert [e.event for e in evs] == [
        "message",
        "message",
        "tool_call",
        "tool_result",
        "message",
        "token",
        "message",
        "done",
    ]
    assert evs[3].data["status"] == "ok" and evs[3].data["content"] == "42"
    assert evs[-1].data["steps"] == 2 and evs[-1].data["usage"]["prompt_tokens"] == 20
    assert [c["tool_choice"] for c in model.calls] == ["required", "auto"]
    assert model.calls[0]["persona"] == "Be exact."
    transcript = await store.run(store.messages.transcript, turn.spec.session_id)
    assert [m.role for m in transcript] == ["user", "assistant", "tool", "assistant"]
    assert transcript[2].tool_call_id == "call_1" and transcript[3].content == "It is 42."
    (run,) = await store.run(store.tool_runs.for_session, turn.spec.session_id)
    assert (run.status, run.result, run.message_id) == ("ok", "42", transcript[1].id)
    assert released.is_set()


async def test_a_call_with_bad_arguments_is_answered_as_a_tool_error_and_not_run(
    store: Store,
) -> None:
    tool = Slow()
    model = ScriptedModel([reply(calls=[tool_call("slow", {"n": "many"})]), reply("Sorry.")])
    turn, _ = await start(store, model, tool)
    evs = await events(turn)
    result = next(e for e in evs if e.event == "tool_result")
    assert result.data["status"] == "error" and "is not of type 'integer'" in result.data["content"]
    assert not tool.started.is_set()
    transcript = await store.run(store.messages.transcript, turn.spec.session_id)
    assert transcript[2].role == "tool" and transcript[2].content.startswith("error:")
    assert evs[-1].event == "done"


async def test_the_last_step_is_offered_no_tools_so_the_turn_ends_with_a_message(
    store: Store,
) -> None:
    loop_forever = [reply(calls=[tool_call("slow", {"n": i}, f"call_{i}")]) for i in range(2)]
    model = ScriptedModel([*loop_forever, reply("Done.", tools=False)])
    turn, _ = await start(store, model, Slow(), max_steps=3)
    evs = await events(turn)
    assert [c["tools"] for c in model.calls] == [["slow"], ["slow"], []]
    assert evs[-1].event == "done" and evs[-1].data["steps"] == 3
    assert evs[-2].data["message"]["content"] == "Done."


async def test_a_cancelled_turn_answers_its_open_tool_call_and_finishes_the_run(
    store: Store,
) -> None:
    tool = Slow()
    tool.delay = 30.0
    model = ScriptedModel([reply(calls=[tool_call("slow", {"n": 1})])])
    turn, released = await start(store, model, tool)
    stream = turn.events()
    async for ev in stream:
        if ev.event == "tool_call":
            break
    await tool.started.wait()
    await stream.aclose()  # the client went away
    await asyncio.wait_for(released.wait(), 10)
    transcript = await store.run(store.messages.transcript, turn.spec.session_id)
    assert [m.role for m in transcript] == ["user", "assistant", "tool"]
    assert "cancelled" in (transcript[2].content or "")
    (run,) = await store.run(store.tool_runs.for_session, turn.spec.session_id)
    assert run.status == "cancelled"


async def test_a_model_failure_ends_the_turn_with_an_error_event(store: Store) -> None:
    async def fail() -> Any:
        raise ModelUnavailable("model 'm' failed to load: bad file")

    turn, released = await start(store, ScriptedModel([fail]), Slow())
    evs = await events(turn)
    assert evs[-1].event == "error" and evs[-1].data["error"]["code"] == "model_unavailable"
    assert turn.error is not None and released.is_set()
