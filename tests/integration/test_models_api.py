"""The OpenAI-compatible API and model lifecycles against a live daemon with the tiny model."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest

from tests.fixtures.tinymodel import EOS_ID, IM_END_ID
from tests.integration.daemon import Daemon, running_daemon, start_daemon

CHAT = [{"role": "user", "content": "Say hello"}]
# the tiny model may end a reply at random; this makes a long generation really long
NO_END = {"logit_bias": {str(EOS_ID): -100, str(IM_END_ID): -100}}


@pytest.fixture(scope="module")
def daemon(tiny_model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    root = tmp_path_factory.mktemp("daemon")
    with running_daemon(
        root,
        models={
            "tiny": {"source": str(tiny_model_path), "context_size": 8192, "parallel": 2},
            # a long context, so an unfinished generation can outlast any test step
            "tiny-serial": {"source": str(tiny_model_path), "context_size": 8192, "parallel": 1},
        },
        config={"models": {"queue_size": 1}},
    ) as d:
        yield d


def test_openai_client_lists_models(daemon: Daemon) -> None:
    ids = {m.id for m in daemon.openai().models.list()}
    assert {"tiny", "tiny-serial", "smollm2-135m-instruct", "all-minilm-l6-v2"} <= ids


def test_chat_completion_plain_and_streamed(daemon: Daemon) -> None:
    client = daemon.openai()
    r = client.chat.completions.create(model="tiny", messages=CHAT, max_tokens=12, temperature=0)
    assert r.object == "chat.completion"
    assert r.choices[0].message.role == "assistant"
    assert r.usage is not None and r.usage.completion_tokens > 0 and r.usage.prompt_tokens > 0
    text = r.choices[0].message.content
    assert text

    chunks = list(
        client.chat.completions.create(
            model="tiny",
            messages=CHAT,
            max_tokens=12,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    deltas = [
        c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content
    ]
    # (token-by-token delivery at a real model's pace is checked in test_acceptance_models; the
    # tiny model is so fast that queued tokens are merged into fewer chunks)
    assert deltas
    assert "".join(deltas) == text, "temperature 0: streamed and plain replies agree"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] in ("length", "stop")
    assert (
        chunks[-1].usage is not None
        and chunks[-1].usage.completion_tokens == r.usage.completion_tokens
    )


def test_completion_plain_and_streamed(daemon: Daemon) -> None:
    client = daemon.openai()
    r = client.completions.create(
        model="tiny", prompt="Once upon a time", max_tokens=8, temperature=0
    )
    assert r.choices[0].text
    streamed = "".join(
        c.choices[0].text
        for c in client.completions.create(
            model="tiny", prompt="Once upon a time", max_tokens=8, temperature=0, stream=True
        )
        if c.choices
    )
    assert streamed == r.choices[0].text


def test_errors_use_openai_error_body(daemon: Daemon) -> None:
    client = daemon.openai(max_retries=0)
    with pytest.raises(openai.NotFoundError) as nf:
        client.chat.completions.create(model="no-such-model", messages=CHAT)
    assert "no-such-model" in nf.value.message and "appliance models add" in nf.value.message
    with pytest.raises(openai.BadRequestError) as bad:
        client.embeddings.create(model="tiny", input="hello")
    assert "chat model" in bad.value.message
    with httpx.Client(base_url=daemon.url) as c:
        r = c.post("/v1/chat/completions", json={"model": "tiny"})
        assert r.status_code == 400
        assert "messages" in r.json()["error"]["message"]
        r = c.post(
            "/v1/chat/completions",
            json={
                "model": "tiny",
                "messages": CHAT,
                "tool_choice": "required",
                "tools": [{"type": "function"}],
            },
        )
        assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"


def test_forced_tool_call_is_valid_json(daemon: Daemon) -> None:
    tools = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "parameters": {
                    "type": "object",
                    "properties": {"city": {"type": "string", "maxLength": 12}},
                    "required": ["city"],
                },
            },
        }
    ]
    r = daemon.openai().chat.completions.create(
        model="tiny",
        messages=CHAT,
        tools=tools,
        max_tokens=60,
        temperature=0,
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
    )
    # the random tiny model may run out of tokens inside the JSON; when it finishes, the call parses
    if r.choices[0].finish_reason == "tool_calls":  # the random model may run out of tokens first
        call = r.choices[0].message.tool_calls[0]
        assert call.function.name == "get_weather"
        assert "city" in __import__("json").loads(call.function.arguments)


def test_concurrent_first_requests_load_once(tiny_model_path: Path, tmp_path: Path) -> None:
    with running_daemon(
        tmp_path, models={"m": {"source": str(tiny_model_path), "context_size": 256, "parallel": 2}}
    ) as d:

        def ask() -> int:
            with d.http() as c:
                return c.post(
                    "/v1/completions", json={"model": "m", "prompt": "hi", "max_tokens": 4}
                ).status_code

        with ThreadPoolExecutor(4) as pool:
            codes = list(pool.map(lambda _: ask(), range(4)))
        assert codes == [200] * 4
        assert d.model("m")["load_count"] == 1


def test_idle_unload_and_wake(tiny_model_path: Path, tmp_path: Path) -> None:
    with (
        running_daemon(
            tmp_path,
            models={"m": {"source": str(tiny_model_path), "context_size": 256, "idle_ttl_s": 1}},
        ) as d,
        d.http() as c,
    ):
        assert (
            c.post(
                "/v1/completions", json={"model": "m", "prompt": "a", "max_tokens": 2}
            ).status_code
            == 200
        )
        m = d.model("m")
        assert m["state"] == "ready" and m["idle_deadline"] is not None
        pid = m["worker_pid"]
        d.wait_state("m", {"unloaded"}, timeout=10)
        assert not _alive(pid), "unloading must end the worker so memory comes back"
        r = c.post("/v1/completions", json={"model": "m", "prompt": "a", "max_tokens": 2})
        assert r.status_code == 200
        assert d.model("m")["load_count"] == 2


def test_keep_alive_zero_minus_one_and_pin(daemon: Daemon) -> None:
    with daemon.http() as c:
        c.post(
            "/v1/completions",
            json={"model": "tiny-serial", "prompt": "a", "max_tokens": 2, "keep_alive": 0},
        )
        daemon.wait_state("tiny-serial", {"unloaded"}, timeout=10)
        c.post(
            "/v1/completions",
            json={"model": "tiny-serial", "prompt": "a", "max_tokens": 2, "keep_alive": -1},
        )
        m = daemon.model("tiny-serial")
        assert m["state"] == "ready" and m["idle_deadline"] is None
        r = c.post("/api/models/tiny-serial/pin", params={"pinned": "true"})
        assert r.status_code == 200 and r.json()["pinned"] is True
        r = c.post("/api/models/tiny-serial/unload")
        assert r.json()["state"] == "unloaded"
        r = c.post("/api/models/tiny-serial/load")
        assert r.json()["state"] == "ready" and r.json()["last_load_ms"] > 0
        c.post("/api/models/tiny-serial/pin", params={"pinned": "false"})


def test_lru_eviction_under_a_small_budget(tiny_model_path: Path, tmp_path: Path) -> None:
    models = {m: {"source": str(tiny_model_path), "context_size": 256} for m in ("a", "b", "c")}
    # each tiny model is estimated at ~35 MiB: two fit in 80 MiB, three do not
    with (
        running_daemon(tmp_path, models=models, config={"models": {"memory_budget_mb": 80}}) as d,
        d.http() as c,
    ):
        for mid in ("a", "b", "a", "c"):
            assert (
                c.post(
                    "/v1/completions", json={"model": mid, "prompt": "x", "max_tokens": 1}
                ).status_code
                == 200
            )
        states = {m["id"]: m["state"] for m in c.get("/api/models").json() if m["id"] in models}
        assert states == {"a": "ready", "b": "unloaded", "c": "ready"}


def test_queue_overflow_gives_503_with_retry_after(tiny_model_path: Path, tmp_path: Path) -> None:
    # 1 slot + a queue of 1: a third concurrent request must be refused at once
    models = {"tiny-serial": {"source": str(tiny_model_path), "context_size": 8192, "parallel": 1}}
    with running_daemon(tmp_path, models=models, config={"models": {"queue_size": 1}}) as daemon:
        _queue_overflow(daemon)


def _queue_overflow(daemon: Daemon) -> None:
    body = {"model": "tiny-serial", "prompt": "x", "max_tokens": 3000, **NO_END}

    def ask() -> httpx.Response:
        with daemon.http() as c:
            return c.post("/v1/completions", json=body)

    # eight requests at once against one slot and one queue place: some must be turned away at once
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda _: ask(), range(8)))
    refused = [r for r in results if r.status_code == 503]
    served = [r for r in results if r.status_code == 200]
    assert len(served) + len(refused) == 8, [r.text for r in results]
    assert len(served) >= 2 and refused, [r.status_code for r in results]
    for r in refused:
        assert r.headers["Retry-After"].isdigit()
        assert r.json()["error"]["code"] == "queue_full"
    assert all(r.json()["usage"]["completion_tokens"] == 3000 for r in served)


def test_client_disconnect_cancels_generation_and_frees_the_slot(daemon: Daemon) -> None:
    with (
        daemon.http() as c,
        c.stream(
            "POST",
            "/v1/chat/completions",
            json={
                "model": "tiny-serial",
                "messages": CHAT,
                "max_tokens": 8000,
                "stream": True,
                **NO_END,
            },
        ) as r,
    ):
        lines = r.iter_lines()
        for _ in range(6):
            next(lines)
    # the slot comes back long before 8000 tokens could have been generated, and the next request runs
    m = daemon.wait_state("tiny-serial", {"ready"}, timeout=10)
    assert m["active"] == 0
    with daemon.http() as c:
        r = c.post(
            "/v1/chat/completions", json={"model": "tiny-serial", "messages": CHAT, "max_tokens": 3}
        )
        assert r.status_code == 200
        assert r.json()["timings"]["queue_ms"] < 5000


def test_killed_worker_fails_its_request_and_daemon_keeps_serving(daemon: Daemon) -> None:
    with daemon.http() as c:
        assert (
            c.post(
                "/v1/completions", json={"model": "tiny", "prompt": "x", "max_tokens": 1}
            ).status_code
            == 200
        )
        pid = daemon.model("tiny")["worker_pid"]
        os.kill(pid, signal.SIGKILL)
        m = daemon.wait_state("tiny", {"failed"}, timeout=10)
        assert "SIGKILL" in m["last_error"] and "tiny" in m["last_error"]
        r = c.post("/v1/completions", json={"model": "tiny", "prompt": "x", "max_tokens": 2})
        assert r.status_code == 200
        assert daemon.model("tiny")["worker_pid"] != pid


def test_killed_worker_mid_stream_gives_5xx_error_naming_the_model(daemon: Daemon) -> None:
    with daemon.http() as c:
        c.post("/v1/completions", json={"model": "tiny", "prompt": "x", "max_tokens": 1})
        pid = daemon.model("tiny")["worker_pid"]
        with ThreadPoolExecutor(1) as pool:
            fut = pool.submit(
                lambda: httpx.post(
                    daemon.url + "/v1/completions",
                    timeout=60,
                    json={"model": "tiny", "prompt": "x", "max_tokens": 8000, **NO_END},
                )
            )
            deadline = time.monotonic() + 5
            while daemon.model("tiny")["active"] == 0 and time.monotonic() < deadline:
                time.sleep(0.002)
            os.kill(pid, signal.SIGKILL)
            r = fut.result()
        # 8000 tokens with no end token take seconds; the kill lands while they are generated
        assert r.status_code == 502, r.text[:300]
        assert "tiny" in r.json()["error"]["message"]
        assert c.get("/api/health").status_code == 200


def test_malformed_gguf_fails_the_load_not_the_daemon(
    tmp_path: Path, tiny_model_path: Path
) -> None:
    from tests.fixtures.tinymodel import write_malformed_gguf

    bad = write_malformed_gguf(tmp_path / "bad.gguf")
    d = start_daemon(
        tmp_path / "d",
        models={
            "bad": {"source": str(bad)},
            "good": {"source": str(tiny_model_path), "context_size": 256},
        },
    )
    try:
        with d.http() as c:
            r = c.post("/v1/completions", json={"model": "bad", "prompt": "x", "max_tokens": 1})
            assert r.status_code in (502, 503, 507), r.text
            assert (
                "bad" in r.json()["error"]["message"]
                or "gguf" in r.json()["error"]["message"].lower()
            )
            m = d.model("bad")
            assert m["state"] == "failed" and m["last_error"]
            assert (
                c.post(
                    "/v1/completions", json={"model": "good", "prompt": "x", "max_tokens": 1}
                ).status_code
                == 200
            )
            assert d.proc.poll() is None
    finally:
        d.stop()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except FileNotFoundError:
        return False
