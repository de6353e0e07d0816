"""`appliance bench swap`: first-token latency of model swaps under churn, against bare llama.cpp.

Two models (a chat model and an embedding model, the shipped SmolLM2 and MiniLM by default)
under a memory budget that fits one of them beside a spare worker but not both, so every request
that alternates between them is a swap. Requests go (a) back to back, the next one the moment the
last answered, as an agent's turn does (chat, memory search, chat...), and (b) with a pause
between them. Beside it, in the same run: a bare in-process `Llama()` plus the first token (the
first embedding for the embedding model) of the same file with the same settings. The target is a
back-to-back swap's p50 at most 1.3x the bare figure.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any

import httpx

from appliance.bench.harness import (
    bare_llama,
    bench_daemon,
    first_token_ms,
    pct,
    peer_runs_like_workers,
    resolve_model,
    wait_spare,
)
from appliance.errors import ApplianceError

PROMPT = "The quick brown fox"
MiB = 2**20


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "swap",
        help="first token of alternating model swaps under a one-model budget vs bare llama.cpp",
    )
    p.add_argument(
        "--chat", default="smollm2-135m-instruct", help="chat model id whose file to use"
    )
    p.add_argument(
        "--embed", default="all-minilm-l6-v2", help="embedding model id whose file to use"
    )
    p.add_argument("--chat-gguf", help="a GGUF path instead of --chat")
    p.add_argument("--embed-gguf", help="a GGUF path instead of --embed")
    p.add_argument("--rounds", type=int, default=10, help="swaps of each model per pattern")
    p.add_argument(
        "--pause", type=float, default=2.0, help="seconds between requests in the paused pattern"
    )
    p.add_argument("--chat-ctx", type=int, default=2048)
    p.add_argument("--chat-parallel", type=int, default=2)
    p.add_argument("--embed-ctx", type=int, default=512)
    p.add_argument(
        "--budget-mb",
        type=int,
        default=0,
        help="memory budget (0: one model and a spare, not both)",
    )
    p.add_argument(
        "--no-recycle",
        action="store_true",
        help="run the daemon with models.recycle_workers = false (every swap needs a spare process)",
    )
    p.add_argument("--config", type=Path)
    p.add_argument("--state-dir")
    p.set_defaults(func=run)


# --- bare llama-cpp-python in this process ----------------------------------------------------


def bare(chat: Path, embed: Path, args: argparse.Namespace, threads: int) -> dict[str, list[float]]:
    import llama_cpp  # noqa: F401  (imported before the clock starts: an import is no load)

    out: dict[str, list[float]] = {"chat": [], "embed": []}
    for i in range(args.rounds + 1):  # the first round warms the page cache and is dropped
        t0 = time.perf_counter()
        llm = bare_llama(chat, args.chat_ctx, threads)
        for _chunk in llm.create_completion(PROMPT, max_tokens=1, temperature=0, stream=True):
            break
        chat_ms = (time.perf_counter() - t0) * 1000.0
        llm.close()
        del llm
        t0 = time.perf_counter()
        emb = bare_llama(embed, args.embed_ctx, threads, embedding=True)
        emb.embed("hello world")
        embed_ms = (time.perf_counter() - t0) * 1000.0
        emb.close()
        del emb
        if i:
            out["chat"].append(chat_ms)
            out["embed"].append(embed_ms)
    return out


# --- the appliance ------------------------------------------------------------------------------


def embed_ms(client: httpx.Client) -> float:
    t0 = time.perf_counter()
    r = client.post("/v1/embeddings", json={"model": "embed", "input": "hello world"})
    if r.status_code != 200:
        raise ApplianceError(f"embedding request failed: {r.status_code} {r.text[:300]}")
    return (time.perf_counter() - t0) * 1000.0


def chat_ms(client: httpx.Client) -> float:
    return first_token_ms(
        client, {"model": "chat", "prompt": PROMPT, "max_tokens": 1, "temperature": 0}
    )


def loads(client: httpx.Client) -> dict[str, int]:
    return {
        m["id"]: int(m["load_count"])
        for m in client.get("/api/models").json()
        if m["id"] in ("chat", "embed")
    }


def pattern(
    client: httpx.Client, rounds: int, pause: float
) -> tuple[dict[str, list[float]], dict[str, int]]:
    """Alternate chat, embed, chat...; every request after the first two is a swap."""
    out: dict[str, list[float]] = {"chat": [], "embed": []}
    before = loads(client)
    for _ in range(rounds):
        for name, ask in (("chat", chat_ms), ("embed", embed_ms)):
            if pause:
                time.sleep(pause)
            out[name].append(ask(client))
    after = loads(client)
    return out, {k: after[k] - before.get(k, 0) for k in after}


def appliance(
    chat: Path, embed: Path, args: argparse.Namespace, threads: int, budget_mb: int
) -> dict[str, Any]:
    profiles: dict[str, dict[str, object]] = {
        "chat": {
            "source": str(chat),
            "context_size": args.chat_ctx,
            "parallel": args.chat_parallel,
            "threads": threads,
            "idle_ttl_s": 3600,
        },
        "embed": {
            "source": str(embed),
            "kind": "embedding",
            "context_size": args.embed_ctx,
            "threads": threads,
            "idle_ttl_s": 3600,
        },
    }
    res: dict[str, Any] = {}
    extra = f"memory_budget_mb = {budget_mb}\nrecycle_workers = {'false' if args.no_recycle else 'true'}"
    with bench_daemon(profiles, models_config=extra) as d, d.http() as c:
        wait_spare(d)
        chat_ms(c)  # the first load of each is cold, not a swap
        embed_ms(c)
        res["back_to_back"], res["b2b_loads"] = pattern(c, args.rounds, 0.0)
        res["paused"], res["paused_loads"] = pattern(c, args.rounds, args.pause)
        res["models"] = {m["id"]: m for m in c.get("/api/models").json()}
        res["scheduler"] = c.get("/api/status").json()["scheduler"]
        res["thrash"] = "appliance_model_thrash_total" in c.get("/metrics").text
    return res


def default_budget_mb(chat: Path, embed: Path, args: argparse.Namespace) -> tuple[int, int, int]:
    from appliance.models.gguf_info import read_gguf_info

    ec = read_gguf_info(chat).estimate_bytes(args.chat_ctx, args.chat_parallel, gpu=False) // MiB
    ee = read_gguf_info(embed).estimate_bytes(args.embed_ctx, 1, gpu=False) // MiB
    return ec, ee, max(ec, ee) + 64  # one model and a spare worker (~50 MiB), not both models


def run(args: argparse.Namespace) -> int:
    peer = peer_runs_like_workers()  # before anything imports llama_cpp
    chat = resolve_model(args.chat, args.chat_gguf, args.config, args.state_dir)
    embed = resolve_model(args.embed, args.embed_gguf, args.config, args.state_dir)
    threads = os.cpu_count() or 1
    ec, ee, auto = default_budget_mb(chat, embed, args)
    budget = args.budget_mb or auto
    print(
        f"chat {chat.name} (~{ec} MiB at n_ctx {args.chat_ctx} x{args.chat_parallel}), embed {embed.name} "
        f"(~{ee} MiB at n_ctx {args.embed_ctx}); budget {budget} MiB; threads {threads}; rounds {args.rounds}; "
        f"pause {args.pause:g}s; recycle_workers {not args.no_recycle}; {peer}"
    )
    if budget >= ec + ee:
        print("warning: both models fit the budget; nothing will swap")
    load0 = os.getloadavg()
    b = bare(chat, embed, args, threads)
    a = appliance(chat, embed, args, threads, budget)
    load1 = os.getloadavg()

    def cell(xs: list[float]) -> str:
        return f"{pct(xs, 0.5):7.1f} / {pct(xs, 0.95):7.1f}"

    print()
    print("first-token latency, ms (p50 / p95)")
    print(
        f"| {'model':6} | {'bare Llama() + first token':>26} | {'back-to-back swap':>17} | {'ratio p50':>9} "
        f"| {'paused swap':>17} | {'ratio p50':>9} |"
    )
    print("| --- | --- | --- | --- | --- | --- |")
    for name in ("chat", "embed"):
        base = pct(b[name], 0.5)
        bb, pz = a["back_to_back"][name], a["paused"][name]
        print(
            f"| {name:6} | {cell(b[name]):>26} | {cell(bb):>17} | {pct(bb, 0.5) / base:8.2f}x "
            f"| {cell(pz):>17} | {pct(pz, 0.5) / base:8.2f}x |"
        )
    print()
    print(
        f"loads during back-to-back: {a['b2b_loads']}, paused: {a['paused_loads']} "
        f"(each should equal --rounds: every request a swap)"
    )
    for name in ("chat", "embed"):
        m = a["models"][name]
        print(
            f"{name}: swap_tier now {m['swap_tier']}, swap_cost_ms {m['swap_cost_ms']}, counters {m['counters']}"
        )
    print(f"thrash metric present: {a['thrash']}; scheduler at the end: {a['scheduler']}")
    print(
        f"load average (1/5/15 min): before {load0[0]:.2f}/{load0[1]:.2f}/{load0[2]:.2f}, "
        f"after {load1[0]:.2f}/{load1[1]:.2f}/{load1[2]:.2f}"
    )
    print("target: back-to-back p50 <= 1.3x bare")
    return 0
