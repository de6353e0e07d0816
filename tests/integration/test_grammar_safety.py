"""Hostile JSON schemas fail their own request with a 400; the model worker and its streams live on.

Issue 9's two schemas (an empty enum: SIGSEGV in the worker; minLength 10^9: a worker growing
without bound) against a real daemon on loopback with the tiny model, while a stream runs on the
same model; then the grammar prover on its own, with the guard bypassed, to show that what the
guard does not catch is still bounded in memory and time and ends in a 400, never a crash.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from appliance.errors import InvalidRequest
from appliance.models.grammar_proof import ProofRequest
from appliance.models.grammars import GrammarCompiler, GrammarProver, GrammarSettings
from tests.fixtures.tinymodel import EOS_ID, IM_END_ID
from tests.integration.daemon import Daemon, running_daemon

GiB = 2**30
CHAT = [{"role": "user", "content": "Say hello"}]
NO_END = {"logit_bias": {str(EOS_ID): -100, str(IM_END_ID): -100}}
EMPTY_ENUM = {"type": "object", "properties": {"s": {"enum": []}}, "required": ["s"]}
HUGE_STRING = {"type": "string", "minLength": 1000000000}


def json_format(schema: dict[str, Any]) -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}


@pytest.fixture(scope="module")
def daemon(tiny_model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    models = {"tiny": {"source": str(tiny_model_path), "context_size": 4096, "parallel": 2}}
    with running_daemon(tmp_path_factory.mktemp("grammar"), models=models) as d:
        yield d


def test_hostile_schemas_get_400_while_a_stream_on_the_model_completes(daemon: Daemon) -> None:
    with daemon.http() as c:
        assert (
            c.post(
                "/v1/completions", json={"model": "tiny", "prompt": "x", "max_tokens": 1}
            ).status_code
            == 200
        )
    pid = daemon.model("tiny")["worker_pid"]
    streamed: dict[str, Any] = {}

    def stream() -> None:
        body = {"model": "tiny", "messages": CHAT, "max_tokens": 400, "stream": True, **NO_END}
        with daemon.http() as c, c.stream("POST", "/v1/chat/completions", json=body) as r:
            lines = [ln for ln in r.iter_lines() if ln.startswith("data: ")]
        streamed["status"] = r.status_code
        streamed["last"] = lines[-1] if lines else ""
        streamed["chunks"] = len(lines)

    t = threading.Thread(target=stream)
    t.start()
    refusals = []
    with daemon.http(timeout=30) as c:
        for schema, param in (
            (EMPTY_ENUM, "properties.s.enum"),
            (HUGE_STRING, "minLength"),
            ({"anyOf": []}, "anyOf"),
        ):
            t0 = time.monotonic()
            r = c.post(
                "/v1/chat/completions",
                json={
                    "model": "tiny",
                    "messages": CHAT,
                    "max_tokens": 8,
                    "response_format": json_format(schema),
                },
            )
            refusals.append(time.monotonic() - t0)
            assert r.status_code == 400, r.text
            err = r.json()["error"]
            assert err["param"] == f"response_format.json_schema.schema.{param}"
            assert err["type"] == "invalid_request_error" and err["code"] == "invalid_json_schema"
        tools = [{"type": "function", "function": {"name": "f", "parameters": EMPTY_ENUM}}]
        r = c.post("/v1/chat/completions", json={"model": "tiny", "messages": CHAT, "tools": tools})
        assert (
            r.status_code == 400
            and r.json()["error"]["param"] == "tools[0].function.parameters.properties.s.enum"
        )
    t.join(60)
    assert (
        streamed["status"] == 200 and streamed["last"] == "data: [DONE]" and streamed["chunks"] > 2
    )
    m = daemon.model("tiny")
    assert m["worker_pid"] == pid and m["counters"]["crashes"] == 0, m
    assert psutil.Process(pid).memory_info().rss < GiB
    assert psutil.Process(daemon.proc.pid).memory_info().rss < GiB
    assert max(refusals) < 5, refusals


def test_valid_schemas_still_constrain_the_reply(daemon: Daemon) -> None:
    schema = {
        "type": "object",
        "properties": {"ok": {"type": "boolean"}},
        "required": ["ok"],
        "additionalProperties": False,
    }
    with daemon.http() as c:
        for _ in range(2):  # the second one is answered from the grammar cache
            r = c.post(
                "/v1/chat/completions",
                json={
                    "model": "tiny",
                    "messages": CHAT,
                    "max_tokens": 40,
                    "temperature": 0,
                    "response_format": json_format(schema),
                },
            )
            assert r.status_code == 200, r.text
            choice = r.json()["choices"][0]
            if (
                choice["finish_reason"] == "stop"
            ):  # the random tiny model may run out of tokens first
                assert isinstance(json.loads(choice["message"]["content"])["ok"], bool)
        r = c.post(
            "/v1/chat/completions",
            json={
                "model": "tiny",
                "messages": CHAT,
                "max_tokens": 4,
                "response_format": {"type": "json_object"},
            },
        )
        assert r.status_code == 200


def test_responses_refuse_a_bad_tool_schema_before_storing_anything(daemon: Daemon) -> None:
    with daemon.http() as c:
        before = c.get("/api/sessions").json()
        r = c.post(
            "/v1/responses",
            json={
                "model": "tiny",
                "input": "hi",
                "tools": [{"type": "function", "name": "f", "parameters": EMPTY_ENUM}],
            },
        )
        assert r.status_code == 400, r.text
        assert r.json()["error"]["param"] == "tools[0].parameters.properties.s.enum"
        r = c.post(
            "/v1/responses",
            json={
                "model": "tiny",
                "input": "hi",
                "text": {"format": {"type": "json_schema", "name": "x", "schema": HUGE_STRING}},
            },
        )
        assert r.status_code == 400 and r.json()["error"]["param"] == "text.format.schema.minLength"
        assert c.get("/api/sessions").json() == before


# --- the prover on its own: what the guard would not catch is still bounded -------------------


async def test_the_prover_contains_memory_crashes_and_time() -> None:
    prover = GrammarProver(GrammarSettings(timeout_s=5.0, memory_mb=256))
    try:
        # the converter writes 10^9 repetitions out: RLIMIT_AS stops it, the verdict is a refusal
        r = await prover.prove(ProofRequest(id=0, schema=HUGE_STRING, param="p"))
        assert r.grammar is None and "memory" in (r.error or "")
        assert psutil.Process(prover.pid).memory_info().rss < GiB
        # 20000 nested groups overflow the stack of llama.cpp's recursive parser: a SIGSEGV, contained
        first = prover.pid
        with pytest.raises(InvalidRequest, match="SIGSEGV") as crashed:
            await prover.prove(
                ProofRequest(id=0, schema={"type": "string", "maxLength": 20000}, param="p")
            )
        assert crashed.value.param == "p"
        # the next proof gets a fresh prover; llama.cpp's own refusals come back as messages
        r = await prover.prove(
            ProofRequest(id=0, schema={"type": "string", "maxLength": 1500}, param="p")
        )
        assert (
            prover.pid != first and r.grammar is None and "llama.cpp cannot use" in (r.error or "")
        )
        ok = await prover.prove(
            ProofRequest(id=0, schema={"type": "string", "maxLength": 10}, param="p")
        )
        assert ok.grammar and "root ::=" in ok.grammar
    finally:
        await prover.close()

    slow = GrammarProver(GrammarSettings(timeout_s=0.2))
    big = {
        "type": "object",
        "properties": {f"p{i}": {"type": "string", "maxLength": 100} for i in range(3000)},
    }
    try:
        await slow.prove(
            ProofRequest(id=0, schema={"type": "string"}, param="p")
        )  # started and warm
        with pytest.raises(InvalidRequest, match=r"longer than 0\.2 s"):
            await slow.prove(ProofRequest(id=0, checks=[("p", big)], schema=big, param="p"))
        assert (await slow.prove(ProofRequest(id=0, schema={"type": "integer"}, param="p"))).grammar
    finally:
        await slow.close()


async def test_the_compiler_caches_verdicts_with_a_bound_and_shares_cold_proofs() -> None:
    compiler = GrammarCompiler(GrammarProver(), GrammarSettings(cache_entries=3))
    try:

        def params(n: int) -> dict[str, Any]:
            return {"response_format": json_format({"type": "string", "maxLength": n})}

        await asyncio.gather(*(compiler.for_chat(params(5)) for _ in range(4)))
        assert compiler.stats["proofs"] == 1, (
            "concurrent requests with one cold schema share its proof"
        )
        for n in range(6, 12):
            await compiler.for_chat(params(n))
        assert len(compiler.cache) == 3
        hits = compiler.stats["hits"]
        await compiler.for_chat(params(11))
        assert compiler.stats["hits"] == hits + 1
        with pytest.raises(InvalidRequest):
            await compiler.for_chat({"response_format": json_format({"type": "strin"})})
        assert compiler.stats["proofs"] == 7, "a schema the guard refuses never reaches the prover"
        with pytest.raises(InvalidRequest, match="not valid JSON Schema") as meta:
            await compiler.for_chat(
                {"response_format": json_format({"type": "string", "format": 5})}
            )
        assert meta.value.param == "response_format.json_schema.schema.format"
    finally:
        await compiler.close()


def test_the_worker_checks_grammars_against_its_vocabulary_and_bounds_its_cache(
    tiny_model_path: Path,
) -> None:
    import llama_cpp

    from appliance.models.worker.sampler import GRAMMAR_CACHE, GrammarCache

    params = llama_cpp.llama_model_default_params()
    params.vocab_only = True
    model = llama_cpp.llama_model_load_from_file(str(tiny_model_path).encode(), params)
    assert model
    cache = GrammarCache(llama_cpp.llama_model_get_vocab(model))
    try:
        with pytest.raises(InvalidRequest, match="cannot parse"):
            cache.sampler(
                'root ::= "{" s\ns ::= \ns-kv ::= "a"'
            )  # what the empty enum became: a NULL sampler
        for i in range(GRAMMAR_CACHE + 10):
            llama_cpp.llama_sampler_free(cache.sampler(f'root ::= "{i}"'))
        assert len(cache) == GRAMMAR_CACHE
    finally:
        cache.close()
        llama_cpp.llama_model_free(model)
