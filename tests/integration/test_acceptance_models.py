"""Acceptance: the real default models (SmolLM2-135M, all-MiniLM-L6-v2) through the openai client."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path

import jsonschema
import pytest

from tests.integration.daemon import Daemon, running_daemon

pytestmark = pytest.mark.slow

CHAT = "smollm2-135m-instruct"
EMBED = "all-minilm-l6-v2"


@pytest.fixture(scope="module")
def daemon(
    smollm2_path: Path, minilm_gguf_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Daemon]:
    # the shipped profiles, pointed at the locally cached files
    with running_daemon(
        tmp_path_factory.mktemp("acceptance"),
        models={
            CHAT: {"source": str(smollm2_path), "context_size": 2048},
            EMBED: {"source": str(minilm_gguf_path), "kind": "embedding", "context_size": 512},
        },
    ) as d:
        yield d


def test_chat_plain_and_streamed(daemon: Daemon) -> None:
    client = daemon.openai()
    messages = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]
    r = client.chat.completions.create(model=CHAT, messages=messages, max_tokens=16, temperature=0)
    answer = r.choices[0].message.content
    assert "Paris" in answer
    stream = client.chat.completions.create(
        model=CHAT, messages=messages, max_tokens=16, temperature=0, stream=True
    )
    pieces = [
        c.choices[0].delta.content for c in stream if c.choices and c.choices[0].delta.content
    ]
    assert "".join(pieces) == answer
    assert len(pieces) > 1


def test_completion(daemon: Daemon) -> None:
    r = daemon.openai().completions.create(
        model=CHAT, prompt="1, 2, 3, 4,", max_tokens=6, temperature=0
    )
    assert "5" in r.choices[0].text


def test_logprobs_of_chat_and_completions_streamed_or_not(daemon: Daemon) -> None:
    client = daemon.openai()
    messages = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]
    r = client.chat.completions.create(
        model=CHAT, messages=messages, max_tokens=8, temperature=0, logprobs=True, top_logprobs=3
    )
    content = r.choices[0].logprobs.content
    assert "".join(t.token for t in content) == r.choices[0].message.content
    for t in content:
        assert t.logprob <= 0 and len(t.top_logprobs) == 3
        # greedy: the chosen token is the most likely one
        assert (
            t.top_logprobs[0].token == t.token and abs(t.top_logprobs[0].logprob - t.logprob) < 1e-6
        )
        assert bytes(t.bytes).decode("utf-8", "replace") == t.token
    stream = client.chat.completions.create(
        model=CHAT, messages=messages, max_tokens=8, temperature=0, logprobs=True, stream=True
    )
    streamed = [
        t.token
        for c in stream
        if c.choices and c.choices[0].logprobs
        for t in c.choices[0].logprobs.content
    ]
    assert streamed == [t.token for t in content]
    plain = client.chat.completions.create(model=CHAT, messages=messages, max_tokens=4)
    assert plain.choices[0].logprobs is None, "no log probabilities unless asked"

    c = client.completions.create(
        model=CHAT, prompt="1, 2, 3, 4,", max_tokens=6, temperature=0, logprobs=2
    )
    lp = c.choices[0].logprobs
    assert "".join(lp.tokens) == c.choices[0].text
    assert len(lp.token_logprobs) == len(lp.tokens) == len(lp.top_logprobs)
    assert all(len(alts) == 2 for alts in lp.top_logprobs)
    assert lp.text_offset[0] == 0 and lp.text_offset[-1] == len("".join(lp.tokens[:-1]))
    import openai

    with pytest.raises(openai.BadRequestError, match="top_logprobs"):
        client.chat.completions.create(
            model=CHAT, messages=messages, max_tokens=2, logprobs=True, top_logprobs=21
        )


def test_embeddings_similar_closer_than_unrelated(daemon: Daemon) -> None:
    texts = [
        "A man is playing a guitar.",
        "Someone plays an acoustic guitar.",
        "The stock market fell sharply today.",
    ]
    r = daemon.openai().embeddings.create(model=EMBED, input=texts)
    vecs = [d.embedding for d in r.data]
    assert all(len(v) == 384 for v in vecs)
    assert all(math.isclose(sum(x * x for x in v), 1.0, rel_tol=1e-3) for v in vecs)

    def cos(a: list[float], b: list[float]) -> float:
        return sum(x * y for x, y in zip(a, b, strict=True))

    assert cos(vecs[0], vecs[1]) > cos(vecs[0], vecs[2]) + 0.2
    assert r.usage.prompt_tokens > 0
    floats = daemon.openai().embeddings.create(model=EMBED, input=texts[0], encoding_format="float")
    assert floats.data[0].embedding == pytest.approx(
        vecs[0], abs=1e-3
    )  # batched vs alone: f16 rounding


def test_forced_tool_call_parses(daemon: Daemon) -> None:
    tools = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Current weather in a city",
                "parameters": {
                    "type": "object",
                    "properties": {"city": {"type": "string"}},
                    "required": ["city"],
                },
            },
        }
    ]
    r = daemon.openai().chat.completions.create(
        model=CHAT,
        messages=[{"role": "user", "content": "What is the weather in Paris?"}],
        tools=tools,
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        max_tokens=64,
        temperature=0,
    )
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls"
    call = choice.message.tool_calls[0]
    assert call.function.name == "get_weather"
    args = json.loads(call.function.arguments)
    jsonschema.validate(args, tools[0]["function"]["parameters"])


def test_auto_tool_choice_returns_a_call_or_a_message(daemon: Daemon) -> None:
    tools = [
        {
            "type": "function",
            "function": {
                "name": "add",
                "parameters": {
                    "type": "object",
                    "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
                    "required": ["a", "b"],
                },
            },
        }
    ]
    r = daemon.openai().chat.completions.create(
        model=CHAT,
        messages=[{"role": "user", "content": "Use the add tool to add 2 and 3."}],
        tools=tools,
        max_tokens=64,
        temperature=0,
    )
    msg = r.choices[0].message
    if msg.tool_calls:
        jsonschema.validate(
            json.loads(msg.tool_calls[0].function.arguments), tools[0]["function"]["parameters"]
        )
    else:
        assert msg.content


def test_json_schema_output_validates(daemon: Daemon) -> None:
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string", "maxLength": 40}, "age": {"type": "integer"}},
        "required": ["name", "age"],
        "additionalProperties": False,
    }
    r = daemon.openai().chat.completions.create(
        model=CHAT,
        messages=[{"role": "user", "content": "Invent a person. Reply as JSON with name and age."}],
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "person", "schema": schema, "strict": True},
        },
        max_tokens=60,
        temperature=0,
    )
    jsonschema.validate(json.loads(r.choices[0].message.content), schema)
    r = daemon.openai().chat.completions.create(
        model=CHAT,
        messages=[
            {"role": "user", "content": "Reply with a JSON object with two keys: name and color."}
        ],
        response_format={"type": "json_object"},
        max_tokens=200,
        temperature=0,
    )
    assert r.choices[0].finish_reason == "stop"
    assert isinstance(json.loads(r.choices[0].message.content), dict)
