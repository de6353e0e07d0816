"""`POST /v1/responses` through the official openai SDK against a daemon with SmolLM2.

Chaining by previous_response_id must continue the same conversation (the second response sees
the first, and reuses its KV state), branching from an older response must not disturb the newer
one, and function tools must round-trip as function_call / function_call_output items.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from tests.integration.daemon import Daemon, running_daemon

MODEL = "smollm2-135m-instruct"
QUICK = {"max_output_tokens": 16, "temperature": 0}


@pytest.fixture(scope="module")
def daemon(smollm2_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    root = tmp_path_factory.mktemp("responses")
    with running_daemon(
        root,
        models={MODEL: {"source": str(smollm2_path), "context_size": 2048, "parallel": 2}},
        config={"agents": {"park_idle_s": 0}},
    ) as d:
        yield d


@pytest.fixture
def client(daemon: Daemon) -> openai.OpenAI:
    return daemon.openai(max_retries=0)  # type: ignore[no-any-return]


def test_a_response_is_created_stored_and_retrieved(client: openai.OpenAI) -> None:
    r = client.responses.create(model=MODEL, input="Say hello.", instructions="Be brief.", **QUICK)
    assert r.object == "response" and r.id.startswith("resp_")
    assert r.status in ("completed", "incomplete") and r.output_text
    assert r.usage is not None and r.usage.input_tokens > 5 and r.usage.output_tokens > 0
    again = client.responses.retrieve(r.id)
    assert again.output_text == r.output_text and again.model == MODEL


def test_previous_response_id_chains_turns_in_one_session(
    client: openai.OpenAI, daemon: Daemon
) -> None:
    first = client.responses.create(model=MODEL, input="My name is Zed.", **QUICK)
    second = client.responses.create(
        model=MODEL, input="What is my name?", previous_response_id=first.id, **QUICK
    )
    assert second.previous_response_id == first.id
    assert second.usage is not None and first.usage is not None
    assert second.usage.input_tokens > first.usage.input_tokens + first.usage.output_tokens, (
        "the second prompt holds the first exchange"
    )
    assert second.usage.input_tokens_details.cached_tokens >= first.usage.input_tokens, (
        "the first exchange was still in the session's slot"
    )
    third = client.responses.create(
        model=MODEL,
        input=[{"role": "user", "content": [{"type": "input_text", "text": "Say it again."}]}],
        previous_response_id=second.id,
        **QUICK,
    )
    assert third.output_text

    with daemon.http() as c:
        sessions = [
            s for s in c.get("/api/sessions").json()["items"] if s["last_response_id"] == third.id
        ]
        (session,) = sessions
        messages = c.get(f"/api/sessions/{session['id']}").json()["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant"] * 3
    assert messages[2]["content"] == "What is my name?"


def test_branching_from_an_older_response_forks_the_conversation(
    client: openai.OpenAI, daemon: Daemon
) -> None:
    root = client.responses.create(model=MODEL, input="Pick a number.", **QUICK)
    left = client.responses.create(
        model=MODEL, input="Double it.", previous_response_id=root.id, **QUICK
    )
    right = client.responses.create(
        model=MODEL, input="Halve it.", previous_response_id=root.id, **QUICK
    )
    with daemon.http() as c:
        by_last = {s["last_response_id"]: s for s in c.get("/api/sessions").json()["items"]}
        left_s, right_s = by_last[left.id], by_last[right.id]
        assert right_s["parent_id"] == left_s["id"]
        left_msgs = [
            m["content"] for m in c.get(f"/api/sessions/{left_s['id']}").json()["messages"]
        ]
        right_msgs = [
            m["content"] for m in c.get(f"/api/sessions/{right_s['id']}").json()["messages"]
        ]
    assert left_msgs[2] == "Double it." and right_msgs[2] == "Halve it."
    assert "Double it." not in right_msgs
    follow = client.responses.create(
        model=MODEL, input="And again.", previous_response_id=left.id, **QUICK
    )
    assert follow.output_text


def test_store_false_is_not_kept(client: openai.OpenAI) -> None:
    r = client.responses.create(model=MODEL, input="Say hi.", store=False, **QUICK)
    assert r.output_text
    with pytest.raises(openai.NotFoundError) as err:
        client.responses.retrieve(r.id)
    assert "store=true" in err.value.message
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model=MODEL, input="Go on.", previous_response_id=r.id, **QUICK)


def test_function_tools_round_trip(client: openai.OpenAI) -> None:
    tools = [
        {
            "type": "function",
            "name": "get_weather",
            "description": "the weather in a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        }
    ]
    asked = client.responses.create(
        model=MODEL,
        input="What is the weather in Paris?",
        tools=tools,  # type: ignore[arg-type]
        tool_choice={"type": "function", "name": "get_weather"},
        max_output_tokens=48,
        temperature=0,
    )
    (call,) = [o for o in asked.output if o.type == "function_call"]
    assert call.name == "get_weather" and "city" in call.arguments
    answered = client.responses.create(
        model=MODEL,
        previous_response_id=asked.id,
        tools=tools,  # type: ignore[arg-type]
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "sunny, 21 C"}],
        **QUICK,
    )
    assert answered.output_text


def test_bad_requests_get_openai_errors(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError):
        client.responses.create(model=MODEL, input=[{"type": "image", "url": "x"}])  # type: ignore[list-item]
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model="no-such-model", input="hi")
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model=MODEL, input="hi", previous_response_id="resp_nope")
    with pytest.raises(openai.BadRequestError) as err:
        client.responses.create(model=MODEL, input="hi", tools=[{"type": "web_search"}])  # type: ignore[list-item]
    assert "function tools" in err.value.message


# --- streaming -----------------------------------------------------------------------------------


def test_a_streamed_response_sends_typed_events_and_is_stored(client: openai.OpenAI) -> None:
    events = list(
        client.responses.create(model=MODEL, input="Count to five.", stream=True, **QUICK)
    )
    kinds = [e.type for e in events]
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[-1] in ("response.completed", "response.incomplete")
    assert [e.sequence_number for e in events] == list(range(len(events)))
    deltas = [e for e in events if e.type == "response.output_text.delta"]
    assert len(deltas) > 1, "the text arrives token by token"
    text = "".join(e.delta for e in deltas)
    (done,) = [e for e in events if e.type == "response.output_text.done"]
    final = events[-1].response  # type: ignore[union-attr]
    assert done.text == text == final.output_text
    assert events[0].response.id == final.id and events[0].response.status == "in_progress"  # type: ignore[union-attr]
    stored = client.responses.retrieve(final.id)
    assert stored.output_text == text
    assert stored.output[0].id == deltas[0].item_id, "the streamed item id is the stored one"
    follow = client.responses.create(
        model=MODEL, input="Again.", previous_response_id=final.id, **QUICK
    )
    assert follow.previous_response_id == final.id and follow.output_text


def test_the_sdk_stream_helper_assembles_the_final_response(client: openai.OpenAI) -> None:
    # The helper wants `response.completed`, so leave room for the answer to end by itself.
    with client.responses.stream(
        model=MODEL, input="Name a colour.", store=False, max_output_tokens=256, temperature=0
    ) as stream:
        pieces = [e.delta for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert final.output_text == "".join(pieces) and final.store is False
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(final.id)


def test_a_streamed_function_call_arrives_whole(client: openai.OpenAI) -> None:
    tools = [
        {
            "type": "function",
            "name": "get_time",
            "description": "the time in a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        }
    ]
    events = list(
        client.responses.create(
            model=MODEL,
            input="What time is it in Oslo?",
            tools=tools,  # type: ignore[arg-type]
            tool_choice={"type": "function", "name": "get_time"},
            stream=True,
            max_output_tokens=48,
            temperature=0,
        )
    )
    (args,) = [e for e in events if e.type == "response.function_call_arguments.done"]
    assert "city" in json.loads(args.arguments)
    (call,) = [o for o in events[-1].response.output if o.type == "function_call"]  # type: ignore[union-attr]
    assert call.name == "get_time" and call.arguments == args.arguments


def test_a_bad_streamed_request_fails_before_the_stream(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model="no-such-model", input="hi", stream=True)
    with pytest.raises(openai.BadRequestError):
        client.responses.create(model=MODEL, input="", stream=True)


def test_each_streamed_event_is_named_after_its_type(daemon: Daemon) -> None:
    with (
        daemon.http() as c,
        c.stream(
            "POST",
            "/v1/responses",
            json={"model": MODEL, "input": "Hi.", "stream": True, "store": False, **QUICK},
        ) as r,
    ):
        assert r.headers["content-type"].startswith("text/event-stream")
        frames = [f for f in r.read().decode().split("\n\n") if f.strip()]
    for frame in frames:
        name, data = frame.split("\n")
        assert name.removeprefix("event: ") == json.loads(data.removeprefix("data: "))["type"]
    assert "[DONE]" not in frames[-1]
