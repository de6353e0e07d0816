"""`appliance bench api`: decode speed through the HTTP API against llama-cpp-python in-process.

(a) in-process: `Llama.generate` on a loaded Llama, token by token, tokens per second from the
    first token to the last;
(b) the appliance: the same prompt and parameters through `POST /v1/completions` with streaming,
    timed at the HTTP client from the first chunk to the last.
At temperature 0 both generate the same tokens. The target is b/a >= 0.95. The daemon's resident
memory with every model unloaded is printed too.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import psutil

from appliance.bench.harness import (
    bare_llama,
    bench_daemon,
    median,
    resolve_model,
    wait_spare,
    wait_state,
)

PROMPT = "Once upon a time, in a small village by the sea, there lived"


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("api", help="decode tokens/s over HTTP vs in-process llama-cpp-python")
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--gguf", help="a GGUF path instead of --model")
    p.add_argument("--tokens", type=int, default=256)
    p.add_argument("--trials", type=int, default=5)
    p.add_argument("--ctx", type=int, default=2048)
    p.add_argument("--config", type=Path)
    p.add_argument("--state-dir")
    p.set_defaults(func=run)


def in_process(path: Path, ctx: int, threads: int, n: int, trials: int) -> list[tuple[int, float]]:
    """The fastest in-process decode: Llama.generate token by token, greedy (what temperature 0
    does), timed from the first token to the last."""
    import llama_cpp

    llm = bare_llama(path, ctx, threads)
    prompt = llm.tokenize(PROMPT.encode(), add_bos=True, special=True)
    out = []
    for _ in range(trials + 1):
        llm.reset()
        first = last = 0.0
        count = 0
        for token in llm.generate(prompt, temp=0.0):
            now = time.perf_counter()
            if count == 0:
                first = now
            last = now
            count += 1
            if count >= n or llama_cpp.llama_vocab_is_eog(llm._model.vocab, token):
                break
        out.append((count - 1, last - first))
    del llm
    return out[1:]


def over_http(
    path: Path, ctx: int, threads: int, n: int, trials: int
) -> tuple[list[tuple[int, float]], int, int]:
    out = []
    with (
        bench_daemon(
            {
                "bench": {
                    "source": str(path),
                    "context_size": ctx,
                    "threads": threads,
                    "idle_ttl_s": -1,
                }
            }
        ) as d,
        d.http() as c,
    ):
        wait_spare(d)
        time.sleep(0.5)
        daemon_rss = psutil.Process(d.proc.pid).memory_info().rss
        spare_rss = sum(ch.memory_info().rss for ch in psutil.Process(d.proc.pid).children())
        c.post("/api/models/bench/load")
        wait_state(d, "bench", "ready")
        for _ in range(trials + 1):
            first = last = 0.0
            count = 0
            body = {
                "model": "bench",
                "prompt": PROMPT,
                "max_tokens": n,
                "temperature": 0,
                "stream": True,
            }
            with c.stream("POST", "/v1/completions", json=body) as r:
                for line in r.iter_lines():
                    if not line.startswith("data: {"):
                        continue
                    if json.loads(line[6:])["choices"][0]["text"]:
                        now = time.perf_counter()
                        if count == 0:
                            first = now
                        last = now
                        count += 1
            out.append((count - 1, last - first))
    return out[1:], daemon_rss, spare_rss


def run(args: argparse.Namespace) -> int:
    path = resolve_model(args.model, args.gguf, args.config, args.state_dir)
    threads = os.cpu_count() or 1
    print(
        f"model file: {path}, {args.tokens} tokens x {args.trials} trials, n_ctx {args.ctx}, threads {threads}"
    )
    a = in_process(path, args.ctx, threads, args.tokens, args.trials)
    b, daemon_rss, spare_rss = over_http(path, args.ctx, threads, args.tokens, args.trials)
    ra = median([n / s for n, s in a if s > 0])
    rb = median([n / s for n, s in b if s > 0])
    print(
        f"(a) in-process llama-cpp-python: median {ra:.1f} tokens/s  ({a[0][0]} tokens per trial)"
    )
    print(
        f"(b) appliance over HTTP (SSE):   median {rb:.1f} tokens/s  ({b[0][0]} chunks per trial)"
    )
    print(f"ratio b/a: {rb / ra:.3f}  (target >= 0.95)")
    print(
        f"daemon resident memory, all models unloaded: {daemon_rss / 2**20:.1f} MiB "
        f"(+ spare worker {spare_rss / 2**20:.1f} MiB)"
    )
    return 0
