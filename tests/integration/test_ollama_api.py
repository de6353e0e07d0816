"""Ollama's API through the official `ollama` Python client against a live daemon.

The client is pointed at the daemon as `OLLAMA_HOST` would point it, with SmolLM2 as the chat
model and MiniLM as the embedding model: listing, show, ps, chat and generate (plain, streamed,
format json or a schema, tools), keep_alive loading and unloading, embed and embeddings, and
errors in Ollama's body with 4xx statuses, from the handlers and from the browser boundary.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import ollama
import pytest

from tests.integration.daemon import Daemon, running_daemon

CHAT = "smollm2-135m-instruct"
EMBED = "all-minilm-l6-v2"
GREEDY = {"temperature": 0, "num_predict": 24, "seed": 7}


@pytest.fixture(scope="module")
def daemon(
    smollm2_path: Path, minilm_gguf_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Daemon]:
    with running_daemon(
        tmp_path_factory.mktemp("ollama"),
        models={
            CHAT: {"source": str(smollm2_path), "context_size": 2048, "parallel": 2},
            EMBED: {"source": str(minilm_gguf_path), "kind": "embedding", "context_size": 512},
        },
        config={"server": {"max_body_mb": 1}},
    ) as d:
        yield d


@pytest.fixture
def client(daemon: Daemon) -> ollama.Client:
    return ollama.Client(host=daemon.url, timeout=120)


def _error(exc: pytest.ExceptionInfo[ollama.ResponseError]) -> str:
    assert isinstance(exc.value.error, str), "Ollama's error body carries a string"
    return exc.value.error


def test_version_tags_and_show(client: ollama.Client, daemon: Daemon) -> None:
    with daemon.http() as c:
        version = c.get("/api/version").json()
    assert isinstance(version["version"], str) and version["version"].count(".") == 2
    models = {m.model: m for m in client.list().models}
    assert set(models) == {CHAT, EMBED}
    assert models[CHAT].size and models[CHAT].size > 10_000_000 and models[CHAT].digest
    assert models[CHAT].details and models[CHAT].details.format == "gguf"
    shown = client.show(CHAT)
    assert shown.capabilities == ["completion", "tools"]
    assert shown.parameters and "num_ctx 2048" in shown.parameters
    assert client.show(EMBED).capabilities == ["embedding"]
    assert client.show(CHAT + ":latest").capabilities  # Ollama's default tag is understood


def test_chat_plain_and_streamed(client: ollama.Client) -> None:
    messages = [{"role": "user", "content": "Name three colours."}]
    whole = client.chat(CHAT, messages=messages, options=GREEDY)
    assert whole.done and whole.done_reason in ("stop", "length")
    assert whole.message.role == "assistant" and whole.message.content
    assert whole.prompt_eval_count and whole.prompt_eval_count > 5 and whole.eval_count
    assert whole.total_duration and whole.eval_duration

    parts = list(client.chat(CHAT, messages=messages, options=GREEDY, stream=True))
    assert len(parts) > 2, "the reply arrives in pieces"
    assert all(not p.done for p in parts[:-1]) and parts[-1].done
    text = "".join(p.message.content or "" for p in parts)
    assert text.strip() and parts[-1].eval_count
    assert parts[-1].message.content == "", "the closing part carries no text of its own"


def test_num_predict_limits_the_reply(client: ollama.Client) -> None:
    r = client.chat(
        CHAT,
        messages=[{"role": "user", "content": "Tell me a long story."}],
        options={"num_predict": 3, "temperature": 0},
    )
    assert r.eval_count == 3 and r.done_reason == "length"


def test_generate_plain_streamed_and_raw(client: ollama.Client) -> None:
    r = client.generate(CHAT, "Say hello.", system="Be brief.", options=GREEDY)
    assert r.done and r.response
    parts = list(
        client.generate(CHAT, "Say hello.", system="Be brief.", options=GREEDY, stream=True)
    )
    assert parts[-1].done and "".join(p.response or "" for p in parts).strip()
    raw = client.generate(CHAT, "The capital of France is", raw=True, options=GREEDY)
    assert raw.response and raw.prompt_eval_count and raw.prompt_eval_count < 10, (
        "raw sends the prompt without the chat template"
    )


def test_format_json_and_a_schema_constrain_the_reply(client: ollama.Client) -> None:
    r = client.chat(
        CHAT,
        messages=[{"role": "user", "content": 'Reply {"name": "Tom"} and nothing else.'}],
        format="json",
        options={"temperature": 0, "num_predict": 200},
    )
    assert r.done_reason == "stop", r.message.content
    assert isinstance(json.loads(r.message.content or ""), dict)
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string"}, "legs": {"type": "integer"}},
        "required": ["name", "legs"],
        "additionalProperties": False,
    }
    g = client.generate(
        CHAT, "A cat, as JSON.", format=schema, options={"temperature": 0, "num_predict": 200}
    )
    assert g.done_reason == "stop", g.response
    doc = json.loads(g.response or "")
    assert set(doc) == {"name", "legs"} and isinstance(doc["legs"], int)


WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}


def test_tools_come_back_in_ollamas_shape_and_results_go_in(client: ollama.Client) -> None:
    asked = [{"role": "user", "content": "Call get_weather for Paris."}]
    r = client.chat(CHAT, messages=asked, tools=[WEATHER], options={"temperature": 0})
    assert r.done
    calls = r.message.tool_calls
    assert calls, f"the model answered without the tool: {r.message.content!r}"
    assert calls[0].function.name == "get_weather"
    assert isinstance(calls[0].function.arguments, dict), "arguments are an object, not text"
    streamed = list(
        client.chat(CHAT, messages=asked, tools=[WEATHER], options={"temperature": 0}, stream=True)
    )
    assert streamed[-1].message.tool_calls == calls

    follow = client.chat(
        CHAT,
        messages=[
            *asked,
            {"role": "assistant", "content": "", "tool_calls": [c.model_dump() for c in calls]},
            {"role": "tool", "content": "18 degrees and sunny", "tool_name": "get_weather"},
        ],
        tools=[WEATHER],
        options=GREEDY,
    )
    assert follow.done and follow.prompt_eval_count
    assert follow.prompt_eval_count > (r.prompt_eval_count or 0), "the tool result is in the prompt"


def _expires(m: Any) -> float:
    when = m.expires_at
    assert isinstance(when, datetime)
    return when.astimezone(UTC).timestamp()


def test_keep_alive_loads_ps_shows_and_zero_unloads(client: ollama.Client, daemon: Daemon) -> None:
    loaded = client.chat(CHAT, messages=[], keep_alive="5m")
    assert loaded.done and loaded.done_reason == "load"
    (running,) = [m for m in client.ps().models if m.model == CHAT]
    assert running.size and running.size > 10_000_000 and running.context_length == 2048
    assert 250 < _expires(running) - time.time() <= 301, "keep_alive 5m is five minutes"

    client.generate(CHAT, "Hi", keep_alive=-1, options={"num_predict": 2})
    (running,) = [m for m in client.ps().models if m.model == CHAT]
    assert _expires(running) > time.time() + 10 * 365 * 86400, "keep_alive -1 never unloads"

    cold_start = client.generate(CHAT, "Hi", options={"num_predict": 2})
    assert cold_start.total_duration and cold_start.total_duration >= (
        cold_start.load_duration or 0
    )

    gone = client.chat(CHAT, messages=[], keep_alive=0)
    assert gone.done_reason == "unload"
    daemon.wait_state(CHAT, {"unloaded"})
    assert CHAT not in [m.model for m in client.ps().models]

    cold = client.generate(CHAT, "Hi", options={"num_predict": 2})
    assert cold.load_duration and cold.load_duration > 0, "the model loaded for this request"
    assert cold.total_duration and cold.total_duration > cold.load_duration


def _cos(a: Any, b: Any) -> float:
    return float(sum(x * y for x, y in zip(a, b, strict=True)))


def test_embed_gives_unit_vectors_that_rank_meaning(client: ollama.Client) -> None:
    r = client.embed(
        EMBED,
        input=["A cat sits on the mat.", "A kitten rests on a rug.", "Stock prices fell today."],
    )
    cat, kitten, stocks = r.embeddings
    assert len(cat) == 384 and r.prompt_eval_count
    assert all(abs(math.sqrt(_cos(v, v)) - 1) < 1e-4 for v in r.embeddings)
    assert _cos(cat, kitten) > _cos(cat, stocks) + 0.2
    cut = client.embed(EMBED, input="A cat sits on the mat.", dimensions=16).embeddings[0]
    assert len(cut) == 16 and abs(math.sqrt(_cos(cut, cut)) - 1) < 1e-4, "cut, then re-normalised"
    old = client.embeddings(EMBED, prompt="A cat sits on the mat.").embedding
    assert len(old) == 384 and _cos(old, cat) > 0.999


def test_errors_are_ollamas_body_with_4xx(client: ollama.Client) -> None:
    with pytest.raises(ollama.ResponseError) as exc:
        client.chat("no-such-model", messages=[{"role": "user", "content": "hi"}])
    assert exc.value.status_code == 404 and "no-such-model" in _error(exc)
    with pytest.raises(ollama.ResponseError) as exc:
        client.show("no-such-model")
    assert exc.value.status_code == 404

    hi = [{"role": "user", "content": "hi"}]
    for options in ({"temperature": 5}, {"temperature": "hot"}, {"num_ctx": 100_000}):
        with pytest.raises(ollama.ResponseError) as exc:
            client.chat(CHAT, messages=hi, options=options)
        assert exc.value.status_code == 400, options
        assert ("temperature" if "temperature" in options else "num_ctx") in _error(exc)
    with pytest.raises(ollama.ResponseError) as exc:
        client.chat(
            CHAT, messages=[{"role": "user", "content": "what is this?", "images": [b"\x89PNG"]}]
        )
    assert exc.value.status_code == 400 and "image" in _error(exc)
    with pytest.raises(ollama.ResponseError) as exc:
        client.generate(CHAT, "what is this?", images=[b"\x89PNG"])
    assert exc.value.status_code == 400 and "image" in _error(exc)
    with pytest.raises(ollama.ResponseError) as exc:
        client.chat(EMBED, messages=hi)
    assert exc.value.status_code == 400 and "/api/embed" in _error(exc)
    with pytest.raises(ollama.ResponseError) as exc:
        client.embed(CHAT, input="hi")
    assert exc.value.status_code == 400
    with pytest.raises(ollama.ResponseError) as exc:
        client.chat(CHAT, messages=hi, keep_alive="soon")
    assert exc.value.status_code == 400 and "keep_alive" in _error(exc)
    with pytest.raises(ollama.ResponseError) as exc:
        client.chat(CHAT, messages=hi, format={"type": "object", "properties": 5})
    assert exc.value.status_code == 400 and "properties" in _error(exc), "the grammar checker's"
    with pytest.raises(ollama.ResponseError) as exc:
        client.pull("no such/name/at/all")  # the hub refuses it before a line is streamed
    assert exc.value.status_code == 400 and "ollama:NAME[:TAG]" in _error(exc)
    with pytest.raises(ollama.ResponseError) as exc:
        client.delete("no-such-model")
    assert exc.value.status_code == 404


def test_hostile_bodies_get_a_4xx_in_ollamas_shape(daemon: Daemon) -> None:
    with daemon.http() as c:
        big = c.post(
            "/api/chat",
            json={"model": CHAT, "messages": [{"role": "user", "content": "x" * (2 << 20)}]},
        )
        bad = c.post(
            "/api/generate", content=b'{"model": ', headers={"Content-Type": "application/json"}
        )
        deep = c.post(
            "/api/embed", content=b"[" * 100_000, headers={"Content-Type": "application/json"}
        )
        typed = c.post("/api/chat", content=b"{}", headers={"Content-Type": "text/plain"})
    for r, status in ((big, 413), (bad, 400), (deep, 400), (typed, 415)):
        assert r.status_code == status, (status, r.text)
        body = r.json()
        assert set(body) == {"error"} and isinstance(body["error"], str) and body["error"]


def test_a_client_that_leaves_a_stream_frees_its_slot(daemon: Daemon) -> None:
    body = {
        "model": CHAT,
        "messages": [{"role": "user", "content": "Count from one to one thousand."}],
        "options": {"num_predict": 1500, "temperature": 0},
    }
    with (
        httpx.Client(base_url=daemon.url, timeout=60) as c,
        c.stream("POST", "/api/chat", json=body) as r,
    ):
        assert r.status_code == 200 and r.headers["content-type"].startswith("application/x-ndjson")
        first = json.loads(next(r.iter_lines()))
        assert first["done"] is False and "content" in first["message"]
    deadline = time.monotonic() + 10
    while daemon.model(CHAT)["active"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert daemon.model(CHAT)["active"] == 0, "the generation stopped when the client left"


def test_tokens_guard_ollamas_routes_and_ollama_api_key_is_one(
    tiny_model_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = tmp_path / "state"
    created = subprocess.run(
        [sys.executable, "-m", "appliance", "token", "create", "editor", "--state-dir", str(state)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    token = re.search(r"apl_\S+", created)
    assert token is not None
    with running_daemon(
        tmp_path, models={"tiny": {"source": str(tiny_model_path), "context_size": 256}}
    ) as d:
        monkeypatch.delenv("OLLAMA_API_KEY", raising=False)
        with pytest.raises(ollama.ResponseError) as exc:
            ollama.Client(host=d.url).list()
        assert exc.value.status_code == 401 and "token" in _error(exc)
        monkeypatch.setenv("OLLAMA_API_KEY", token.group(0))  # the client sends it as a Bearer
        models = ollama.Client(host=d.url).list().models
        assert "tiny" in [m.model for m in models]
