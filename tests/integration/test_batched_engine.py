"""The batched engine with SmolLM2 in a real worker: many requests decode in one context.

Every check runs real llama.cpp on the real model through the worker's own protocol. Answers are
compared at temperature 0: what eight requests produce together is what they produce one at a time.
The worker's counters (`Stats`) show what the engine did with sequences and KV cells.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from appliance.bench.serve import PROMPTS
from appliance.models.gguf_info import read_gguf_info
from appliance.models.worker import protocol as p
from appliance.models.worker.kvfile import read_kv_file
from appliance.models.worker.process import ProcessSpawner, RequestStream, WorkerProcess

SYSTEM = "You are a careful assistant for the harbour office. " + " ".join(
    f"Rule {i}: ships of class {i} dock at pier {i % 4} and pay {i * 3} coins." for i in range(20)
)


async def start(path: Path, **load: Any) -> WorkerProcess:
    w = await ProcessSpawner().spawn()
    spec = {"n_ctx": 1024, "n_threads": 2, "parallel": 8, **load}
    await w.load(p.Load(model_path=str(path), **spec), timeout=120)
    return w


@pytest.fixture
async def worker(smollm2_path: Path) -> AsyncIterator[WorkerProcess]:
    w = await start(smollm2_path)
    try:
        yield w
    finally:
        await w.close()


def gen(
    prompt: str,
    *,
    key: str | None = None,
    max_tokens: int = 24,
    window: int = 0,
    chat: bool = False,
    **params: Any,
) -> Any:
    extra = {
        k: params.pop(k) for k in ("park_evicted_to", "restore_from", "grammar") if k in params
    }
    fields: dict[str, Any] = {"max_tokens": max_tokens, "temperature": 0.0, **params}
    if chat:
        fields["messages"] = [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": prompt},
        ]
    else:
        fields["prompt"] = prompt
    gp = p.GenerateParams(**fields)

    def make(i: int) -> p.Generate:
        return p.Generate(
            id=i,
            op="chat" if chat else "completion",
            params=gp,
            slot_key=key,
            window=window,
            **extra,
        )

    return make


async def run(w: WorkerProcess, make: Any) -> p.GenerateResult:
    return await w.call(make, p.GenerateResult)


async def stats(w: WorkerProcess) -> p.StatsResult:
    return await w.call(lambda i: p.Stats(id=i), p.StatsResult)


async def test_eight_concurrent_requests_say_what_they_say_one_at_a_time(
    smollm2_path: Path,
) -> None:
    """Bit for bit with a KV stream per sequence. With the unified buffer (the default) a token's
    attention runs over every cell of the batch's span, the others' masked out, and how wide that
    span is depends on who else is in the batch: the sums then differ in the last bits and a
    near tie between two tokens can go the other way, so only the batching is checked there."""
    for unified in (False, True):
        w = await start(smollm2_path, kv_unified=unified)
        try:
            alone = [await run(w, gen(t, max_tokens=32)) for t in PROMPTS]
            before = await stats(w)
            together = await asyncio.gather(*(run(w, gen(t, max_tokens=32)) for t in PROMPTS))
            after = await stats(w)
        finally:
            await w.close()
        if not unified:
            assert [r.text for r in together] == [r.text for r in alone]
        assert len({r.timings.slot for r in together}) == 8, "a sequence each"
        # decoded together: far fewer steps than one request after another would take
        assert after.steps - before.steps < 2 * 32 + 8
        assert all(r.usage.completion_tokens == 32 or r.finish_reason == "stop" for r in together)


async def test_a_long_prompt_is_prefilled_in_chunks_while_seven_streams_decode(
    smollm2_path: Path,
) -> None:
    w = await start(smollm2_path, n_batch=128, n_ctx=2048)
    try:
        streams = [await w.request(gen(t, max_tokens=200)) for t in PROMPTS[:7]]
        counts = [0] * 7

        async def drain(i: int, s: RequestStream) -> None:
            async for ev in s:
                if isinstance(ev, p.Delta):
                    counts[i] += 1

        tasks = [asyncio.create_task(drain(i, s)) for i, s in enumerate(streams)]
        while min(counts) < 3:
            await asyncio.sleep(0.01)
        long_prompt = " ".join(f"word{i}" for i in range(390))  # about 1500 tokens
        at_submit = list(counts)
        long = await w.request(gen(long_prompt, max_tokens=4))
        first_seen: list[int] | None = None
        async for ev in long:
            if isinstance(ev, p.Delta) and first_seen is None:
                first_seen = list(counts)
            if isinstance(ev, p.Done):
                result = ev.result
        assert isinstance(result, p.GenerateResult) and result.usage.prompt_tokens > 1200
        assert first_seen is not None
        chunks = result.usage.prompt_tokens // (128 - 7)
        # every chunk of the long prompt shared its step with a token of every stream
        gained = [b - a for a, b in zip(at_submit, first_seen, strict=True)]
        assert min(gained) >= chunks - 3, (gained, chunks)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        await w.close()


async def test_cancelling_frees_the_sequence_and_its_cells(worker: WorkerProcess) -> None:
    s = await worker.request(gen(PROMPTS[0], max_tokens=400, window=0))
    async for ev in s:
        if isinstance(ev, p.Delta):
            await s.cancel()
        if isinstance(ev, p.Done):
            assert isinstance(ev.result, p.GenerateResult)
            assert ev.result.finish_reason == "cancelled"
            slot = ev.result.timings.slot
    info = (await stats(worker)).sequences[slot]
    assert not info.busy and info.cells == 0 and info.n_tokens == 0


async def test_a_grammar_request_beside_plain_ones_and_seeds_reproduce(
    worker: WorkerProcess,
) -> None:
    grammar = 'root ::= "yes" | "no"'
    plain = [gen(t, max_tokens=16) for t in PROMPTS[:3]]
    seeded = [gen(PROMPTS[4], max_tokens=16, temperature=1.0, seed=s) for s in (42, 42, 7)]
    # every sampler of the chain: penalties, bias, top-k/p, min-p
    plain[2] = gen(
        PROMPTS[2],
        max_tokens=16,
        temperature=0.7,
        top_k=20,
        top_p=0.9,
        min_p=0.1,
        repeat_penalty=1.3,
        presence_penalty=0.5,
        frequency_penalty=0.5,
        logit_bias={"198": -100},
        seed=3,
    )
    made = [gen("Is the sea wet? Answer:", max_tokens=4, grammar=grammar), *plain, *seeded]
    out = await asyncio.gather(*(run(worker, m) for m in made))
    assert out[0].text in ("yes", "no")
    assert out[4].text == out[5].text, "the same seed gives the same sample"
    assert out[4].text != out[6].text


async def test_a_shared_system_prompt_is_evaluated_once(worker: WorkerProcess) -> None:
    first = await run(worker, gen("Where do class 3 ships dock?", key="ses_one", chat=True))
    before = await stats(worker)
    second = await run(worker, gen("What do class 5 ships pay?", key="ses_two", chat=True))
    after = await stats(worker)
    assert first.timings.slot != second.timings.slot
    system_tokens = first.usage.prompt_tokens - 20
    assert second.usage.shared_tokens >= system_tokens, second.usage
    assert after.prompt_shared - before.prompt_shared == second.usage.shared_tokens
    assert after.prompt_evaluated - before.prompt_evaluated < 40


async def test_sessions_park_to_ram_spill_to_disk_and_restore_from_each(
    smollm2_path: Path, tmp_path: Path
) -> None:
    kv_per_token = read_gguf_info(smollm2_path).kv_bytes(1)
    history = " ".join(f"Note {i}: the ferry left at {i} o'clock." for i in range(40))
    # room in RAM for about one such session
    w = await start(smollm2_path, parallel=1, kv_ram_budget=int(kv_per_token * 700))
    park = {"park_evicted_to": str(tmp_path)}
    try:
        a = await run(w, gen(history, key="ses_a", max_tokens=8))
        other = history.replace("ferry", "barge")
        b = await run(w, gen(other, key="ses_b", max_tokens=8, **park))
        (to_ram,) = b.parked
        assert to_ram.slot_key == "ses_a" and to_ram.tier == "ram" and to_ram.path is None
        c = await run(w, gen("Unrelated words.", key="ses_c", max_tokens=8, **park))
        tiers = {r.slot_key: r for r in c.parked}
        assert tiers["ses_b"].tier == "ram"
        assert tiers["ses_a"].tier == "disk" and tiers["ses_a"].path, "a spilled under the budget"
        tokens, _ = read_kv_file(tiers["ses_a"].path)
        assert len(tokens) == a.usage.prompt_tokens
        # b comes back from RAM, a from its file
        b2 = await run(w, gen(other + b.text + " And", key="ses_b", max_tokens=8, **park))
        assert b2.restore is not None and b2.restore.restored and b2.restore.tier == "ram"
        a2 = await run(
            w,
            gen(
                history + a.text + " Then",
                key="ses_a",
                max_tokens=8,
                restore_from=tiers["ses_a"].path,
                **park,
            ),
        )
        assert a2.restore is not None and a2.restore.restored and a2.restore.tier == "disk"
        assert a2.usage.cached_tokens >= a.usage.prompt_tokens
        # the answer is the one a full prefill gives
        fresh = await run(w, gen(history + a.text + " Then", key="ses_fresh", max_tokens=8))
        assert fresh.text == a2.text
        # the fresh session displaced a, into RAM: a session parked there can still be saved to
        # disk (idle parking, an unload, the daemon's stop)
        assert [r.tier for r in fresh.parked if r.slot_key == "ses_a"] == ["ram"]
        saved = await w.call(
            lambda i: p.SaveSlot(id=i, slot_key="ses_a", path=str(tmp_path / "a2.kv")),
            p.SaveResult,
        )
        assert saved.state is not None and saved.state.n_tokens == len(
            read_kv_file(tmp_path / "a2.kv")[0]
        )
        s = await stats(w)
        assert s.ram_hits >= 1 and s.ram_spilled >= 1
    finally:
        await w.close()


async def test_raising_parallel_adds_only_the_kv_cache(smollm2_path: Path) -> None:
    info = read_gguf_info(smollm2_path)
    rss = {}
    for parallel in (1, 8):
        w = await start(smollm2_path, parallel=parallel, n_ctx=1024)
        try:
            await run(w, gen(PROMPTS[0], max_tokens=4))
            time.sleep(0.2)
            rss[parallel] = psutil.Process(w.pid).memory_info().rss
        finally:
            await w.close()
    added = rss[8] - rss[1]
    expected = info.kv_bytes(1024) * 7
    assert 0.8 * expected <= added <= 1.25 * expected + 16 * 2**20, (added, expected)
    # and the scheduler's estimate says the same
    e1 = info.estimate_bytes(1024, 1)
    e8 = info.estimate_bytes(1024, 8)
    assert e8 - e1 == expected


async def test_embedding_inputs_and_concurrent_calls_share_batches(minilm_gguf_path: Path) -> None:
    w = await ProcessSpawner().spawn()
    await w.load(
        p.Load(model_path=str(minilm_gguf_path), kind="embedding", n_ctx=512, n_threads=2),
        timeout=120,
    )
    try:
        texts = [f"{t} ({i})" for i, t in enumerate(PROMPTS * 3)]

        async def embed(inputs: list[str]) -> p.EmbedResult:
            return await w.call(lambda i: p.Embed(id=i, inputs=inputs), p.EmbedResult)

        alone = [(await embed([t])).embeddings[0] for t in texts[:3]]
        before = await stats(w)
        calls = await asyncio.gather(*(embed(texts[i : i + 8]) for i in range(0, 24, 8)))
        after = await stats(w)
        assert after.steps - before.steps <= 3, "24 inputs in at most one batch per call"
        vectors = [v for r in calls for v in r.embeddings]
        assert len(vectors) == 24
        for a, b in zip(alone, vectors[:3], strict=True):
            assert max(abs(x - y) for x, y in zip(a, b, strict=True)) < 1e-4
            assert abs(sum(x * x for x in b) - 1.0) < 1e-4
    finally:
        await w.close()
