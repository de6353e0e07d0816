"""Hostile and careless input against a live daemon: 400s that name the field, bounded generation.

Every body here once produced a 500, was accepted out of range, or made the daemon spend what
the client never asked for (issue 9): each must now get a 4xx with OpenAI's error body and a
`param` naming the field, before any model is loaded. A request without max_tokens ends at the
profile's limit; a client that leaves a non-streaming request stops its generation; a worker
that stops answering is killed, its request gets 504 and the model comes back on the next one.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.fixtures.tinymodel import EOS_ID, IM_END_ID
from tests.integration.daemon import Daemon, running_daemon

CHAT = [{"role": "user", "content": "hi"}]
NO_END = {"logit_bias": {str(EOS_ID): -100, str(IM_END_ID): -100}}
"""The tiny model may end a reply at random; without its end tokens a reply runs to its limit."""


@pytest.fixture(scope="module")
def daemon(tiny_model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    root = tmp_path_factory.mktemp("validation")
    with running_daemon(
        root,
        models={
            # the refused requests all name this model: it must never be loaded by them
            "untouched": {"source": str(tiny_model_path), "context_size": 256},
            "capped": {"source": str(tiny_model_path), "context_size": 512, "max_tokens": 8},
            "long": {"source": str(tiny_model_path), "context_size": 8192, "parallel": 1},
        },
    ) as d:
        yield d


def _tool_call_without_function() -> dict[str, Any]:
    return {
        "model": "untouched",
        "messages": [
            {"role": "user", "content": "weather?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [{"id": "call_1", "type": "function"}],
            },
        ],
    }


REFUSED: list[tuple[str, str, Any, str]] = [
    (
        "/v1/chat/completions",
        "tool call without function",
        _tool_call_without_function(),
        "messages[1].tool_calls[0].function",
    ),
    (
        "/v1/chat/completions",
        "seed beyond 64 bits",
        {"model": "untouched", "messages": CHAT, "seed": 2**70},
        "seed",
    ),
    (
        "/v1/chat/completions",
        "max_tokens -1",
        {"model": "untouched", "messages": CHAT, "max_tokens": -1},
        "max_tokens",
    ),
    (
        "/v1/chat/completions",
        "max_tokens 0",
        {"model": "untouched", "messages": CHAT, "max_tokens": 0},
        "max_tokens",
    ),
    (
        "/v1/chat/completions",
        "max_tokens beyond the context",
        {"model": "untouched", "messages": CHAT, "max_tokens": 100_000},
        "max_tokens",
    ),
    (
        "/v1/chat/completions",
        "max_completion_tokens beyond the context",
        {"model": "untouched", "messages": CHAT, "max_completion_tokens": 257},
        "max_completion_tokens",
    ),
    (
        "/v1/chat/completions",
        "temperature 5",
        {"model": "untouched", "messages": CHAT, "temperature": 5},
        "temperature",
    ),
    (
        "/v1/chat/completions",
        "top_p 2",
        {"model": "untouched", "messages": CHAT, "top_p": 2},
        "top_p",
    ),
    (
        "/v1/chat/completions",
        "top_p 0",
        {"model": "untouched", "messages": CHAT, "top_p": 0},
        "top_p",
    ),
    (
        "/v1/chat/completions",
        "presence_penalty 3",
        {"model": "untouched", "messages": CHAT, "presence_penalty": 3},
        "presence_penalty",
    ),
    ("/v1/chat/completions", "n 2", {"model": "untouched", "messages": CHAT, "n": 2}, "n"),
    (
        "/v1/chat/completions",
        "logit_bias 101",
        {"model": "untouched", "messages": CHAT, "logit_bias": {"5": 101}},
        "logit_bias",
    ),
    (
        "/v1/chat/completions",
        "five stop strings",
        {"model": "untouched", "messages": CHAT, "stop": ["a", "b", "c", "d", "e"]},
        "stop",
    ),
    (
        "/v1/chat/completions",
        "unknown role",
        {"model": "untouched", "messages": [{"role": "robot", "content": "x"}]},
        "messages[0].role",
    ),
    (
        "/v1/chat/completions",
        "tool message without tool_call_id",
        {"model": "untouched", "messages": [*CHAT, {"role": "tool", "content": "21 C"}]},
        "messages[1].tool_call_id",
    ),
    (
        "/v1/chat/completions",
        "image content part",
        {
            "model": "untouched",
            "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}],
        },
        "messages[0].content[0].type",
    ),
    (
        "/v1/chat/completions",
        "tool without function name",
        {"model": "untouched", "messages": CHAT, "tools": [{"type": "function", "function": {}}]},
        "tools[0].function.name",
    ),
    ("/v1/completions", "prompt of the wrong type", {"model": "untouched", "prompt": 5}, "prompt"),
    (
        "/v1/responses",
        "temperature as an empty string",
        {"model": "untouched", "input": "hi", "temperature": ""},
        "temperature",
    ),
    (
        "/v1/responses",
        "max_output_tokens as a word",
        {"model": "untouched", "input": "hi", "max_output_tokens": "x"},
        "max_output_tokens",
    ),
    (
        "/v1/responses",
        "max_output_tokens beyond the context",
        {"model": "untouched", "input": "hi", "max_output_tokens": 1000},
        "max_output_tokens",
    ),
    (
        "/v1/responses",
        "function_call item with object arguments",
        {
            "model": "untouched",
            "input": [
                {"type": "function_call", "name": "f", "arguments": {"a": 1}, "call_id": "c"}
            ],
        },
        "input[0].arguments",
    ),
    (
        "/v1/responses",
        "message item with a list for a role",
        {"model": "untouched", "input": [{"type": "message", "role": [], "content": "hi"}]},
        "input[0].role",
    ),
    (
        "/api/agents",
        "agent seed beyond 64 bits",
        {"name": "bad-seed", "model": "untouched", "params": {"seed": 2**70}},
        "params.seed",
    ),
]


@pytest.mark.parametrize(("path", "what", "body", "param"), REFUSED, ids=[r[1] for r in REFUSED])
def test_malformed_bodies_get_400_naming_the_field(
    daemon: Daemon, path: str, what: str, body: Any, param: str
) -> None:
    with daemon.http() as c:
        r = c.post(path, json=body)
    assert r.status_code == 400, (what, r.status_code, r.text)
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error" and err["message"]
    assert err["param"] == param, (what, err)


def test_a_deeply_nested_body_is_a_400_not_a_500(daemon: Daemon) -> None:
    with daemon.http() as c:
        r = c.post(
            "/v1/chat/completions",
            content=b"[" * 5000,
            headers={"Content-Type": "application/json"},
        )
    assert r.status_code == 400, r.text
    assert "nested" in r.json()["error"]["message"]


def test_refused_requests_never_loaded_the_model(daemon: Daemon) -> None:
    for path, _what, body, _param in REFUSED:
        with daemon.http() as c:
            assert c.post(path, json=body).status_code == 400
    m = daemon.model("untouched")
    assert m["load_count"] == 0 and m["state"] == "unloaded", m


@pytest.mark.parametrize("keep_alive", ["nan", "inf", "1e308", "-2"])
def test_a_keep_alive_that_is_not_a_duration_is_refused(daemon: Daemon, keep_alive: str) -> None:
    # nan once armed an idle deadline that never passed and never failed: the reaper spun
    with daemon.http() as c:
        r = c.post(f"/api/models/untouched/load?keep_alive={keep_alive}")
    assert r.status_code == 400 and r.json()["error"]["param"] == "keep_alive", r.text
    assert daemon.model("untouched")["load_count"] == 0


def test_the_openai_sdk_sees_a_bad_request_with_the_param(daemon: Daemon) -> None:
    client = daemon.openai(max_retries=0)
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="untouched", messages=CHAT, temperature=5)  # type: ignore[arg-type]
    assert err.value.param == "temperature"
    with pytest.raises(openai.BadRequestError) as err:
        client.responses.create(model="untouched", input="hi", max_output_tokens=0)
    assert err.value.param == "max_output_tokens"


def test_a_session_turn_beyond_the_context_is_refused_before_it_is_stored(daemon: Daemon) -> None:
    with daemon.http() as c:
        session = c.post("/api/sessions", json={"model": "untouched"}).json()
        r = c.post(
            f"/api/sessions/{session['id']}/messages", json={"content": "hi", "max_tokens": 10_000}
        )
        assert r.status_code == 400 and r.json()["error"]["param"] == "max_tokens", r.text
        r = c.post(f"/api/sessions/{session['id']}/messages", json={"content": "hi", "seed": 2**64})
        assert r.status_code == 400 and r.json()["error"]["param"] == "seed", r.text
        assert c.get(f"/api/sessions/{session['id']}").json()["messages"] == []


def test_a_request_without_max_tokens_ends_at_the_profile_limit(daemon: Daemon) -> None:
    with daemon.http() as c:
        r = c.post("/v1/chat/completions", json={"model": "capped", "messages": CHAT, **NO_END})
        assert r.status_code == 200, r.text
        body = r.json()
        assert (
            body["usage"]["completion_tokens"] == 8
            and body["choices"][0]["finish_reason"] == "length"
        )
        # an explicit limit still wins, up to the context
        r = c.post(
            "/v1/completions", json={"model": "capped", "prompt": "hi", "max_tokens": 20, **NO_END}
        )
        assert r.json()["usage"]["completion_tokens"] == 20


def _generations(daemon: Daemon, model: str, outcome: str) -> float:
    with daemon.http() as c:
        text = c.get("/metrics").text
    pattern = rf'^appliance_generations_total\{{[^}}]*model="{model}"[^}}]*outcome="{outcome}"[^}}]*\}} (\S+)$'
    return sum(float(m.group(1)) for m in re.finditer(pattern, text, re.M))


def test_a_client_that_leaves_a_plain_request_stops_its_generation(daemon: Daemon) -> None:
    body = {"model": "long", "prompt": "x", "max_tokens": 8000, **NO_END}
    # load first, so the request below is generating when the client leaves
    with daemon.http() as c:
        assert (
            c.post(
                "/v1/completions", json={"model": "long", "prompt": "x", "max_tokens": 1}
            ).status_code
            == 200
        )
    with (
        pytest.raises(httpx.ReadTimeout),
        httpx.Client(base_url=daemon.url, timeout=httpx.Timeout(5, read=0.5)) as c,
    ):
        c.post("/v1/completions", json=body)
    deadline = time.monotonic() + 10
    while _generations(daemon, "long", "cancelled") < 1:
        assert time.monotonic() < deadline, "the generation went on after its client left"
        time.sleep(0.05)
    m = daemon.wait_state("long", {"ready"}, timeout=5)
    assert m["active"] == 0
    with daemon.http() as c:
        r = c.post("/v1/completions", json={"model": "long", "prompt": "x", "max_tokens": 2})
        assert r.status_code == 200 and r.json()["timings"]["queue_ms"] < 2000


@contextlib.contextmanager
def _stopped(pid: int) -> Iterator[None]:
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def test_a_worker_that_stops_answering_is_killed_and_its_requests_get_504(
    tiny_model_path: Path, tmp_path: Path
) -> None:
    models = {"m": {"source": str(tiny_model_path), "context_size": 8192, "parallel": 2}}
    with (
        running_daemon(tmp_path, models=models, config={"models": {"worker_timeout_s": 1.0}}) as d,
        d.http(timeout=30) as c,
    ):
        assert (
            c.post(
                "/v1/completions", json={"model": "m", "prompt": "x", "max_tokens": 2}
            ).status_code
            == 200
        )
        pid = d.model("m")["worker_pid"]
        # a stream that has started: its error comes as OpenAI's error event
        with c.stream(
            "POST",
            "/v1/completions",
            json={"model": "m", "prompt": "x", "max_tokens": 8000, "stream": True, **NO_END},
        ) as stream:
            lines = stream.iter_lines()
            assert next(lines).startswith("data: ")
            with _stopped(pid):
                t0 = time.monotonic()
                plain = c.post(
                    "/v1/completions", json={"model": "m", "prompt": "x", "max_tokens": 4}
                )
                waited = time.monotonic() - t0
                rest = [ln for ln in lines if ln.startswith("data: ")]
        assert plain.status_code == 504, plain.text
        err = plain.json()["error"]
        assert (
            err["code"] == "worker_timeout"
            and "stopped answering" in err["message"]
            and "'m'" in err["message"]
        )
        assert waited < 10
        assert rest[-1] == "data: [DONE]" and '"worker_timeout"' in rest[-2], rest[-3:]
        m = d.wait_state("m", {"failed", "unloaded"}, timeout=10)
        assert "stopped answering" in m["last_error"]
        r = c.post("/v1/completions", json={"model": "m", "prompt": "x", "max_tokens": 2})
        assert r.status_code == 200, r.text
        assert d.model("m")["worker_pid"] not in (None, pid)


def test_a_busy_worker_is_not_mistaken_for_a_hung_one(
    tiny_model_path: Path, tmp_path: Path
) -> None:
    """A generation longer than worker_timeout_s, read slowly, is answered in full."""
    models = {"m": {"source": str(tiny_model_path), "context_size": 4096}}
    with (
        running_daemon(tmp_path, models=models, config={"models": {"worker_timeout_s": 0.5}}) as d,
        d.http(timeout=60) as c,
        c.stream(
            "POST",
            "/v1/completions",
            json={"model": "m", "prompt": "x", "max_tokens": 300, "stream": True, **NO_END},
        ) as stream,
    ):
        chunks = 0
        for line in stream.iter_lines():
            if line.startswith("data: {"):
                assert '"error"' not in line, line
                chunks += 1
                if chunks < 4:
                    time.sleep(0.5)  # the worker waits for flow-control credit meanwhile
        assert chunks > 4
        assert d.model("m")["counters"]["crashes"] == 0
