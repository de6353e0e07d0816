"""`appliance bench wakeup`: how long an idle-unloaded model takes to answer, against bare llama.cpp.

(a) bare llama-cpp-python in this process (already imported): `Llama(...)` plus the first token.
(b) the appliance: the first token of a streamed request to a model that was unloaded, with the
    spare worker ready, measured at the HTTP client.
Both use the same file, context size, threads and prompt. The target is b/a <= 1.1.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from appliance.bench.harness import (
    bare_llama,
    bench_daemon,
    first_token_ms,
    median,
    resolve_model,
    wait_spare,
    wait_state,
)

PROMPT = "The quick brown fox"


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "wakeup", help="first token from an unloaded model: appliance vs bare llama-cpp-python"
    )
    p.add_argument("--model", default="smollm2-135m-instruct", help="model id whose file to use")
    p.add_argument("--gguf", help="a GGUF path instead of --model")
    p.add_argument("--trials", type=int, default=7)
    p.add_argument("--ctx", type=int, default=2048)
    p.add_argument("--config", type=Path)
    p.add_argument("--state-dir")
    p.set_defaults(func=run)


def bare(path: Path, ctx: int, threads: int, trials: int) -> list[float]:
    import llama_cpp  # noqa: F401  (imported before the clock starts: an import is no load)

    out = []
    for _ in range(trials):
        t0 = time.perf_counter()
        llm = bare_llama(path, ctx, threads)
        for _chunk in llm.create_completion(PROMPT, max_tokens=1, temperature=0, stream=True):
            break
        out.append((time.perf_counter() - t0) * 1000.0)
        del llm
    return out


def appliance(path: Path, ctx: int, threads: int, trials: int) -> tuple[list[float], list[float]]:
    out, loads = [], []
    with (
        bench_daemon(
            {
                "bench": {
                    "source": str(path),
                    "context_size": ctx,
                    "threads": threads,
                    "idle_ttl_s": 1,
                }
            }
        ) as d,
        d.http() as c,
    ):
        c.post("/api/models/bench/load")  # warm the page cache like the bare run's first trial does
        for _ in range(trials):
            c.post("/api/models/bench/unload")
            wait_state(d, "bench", "unloaded")
            wait_spare(d)
            time.sleep(0.3)  # let the machine settle after the spare's start-up
            out.append(
                first_token_ms(
                    c, {"model": "bench", "prompt": PROMPT, "max_tokens": 1, "temperature": 0}
                )
            )
            loads.append(float(c.get("/api/models/bench").json()["last_load_ms"] or 0))
    return out, loads


def run(args: argparse.Namespace) -> int:
    path = resolve_model(args.model, args.gguf, args.config, args.state_dir)
    threads = os.cpu_count() or 1
    print(
        f"model file: {path} ({path.stat().st_size / 2**20:.1f} MiB), n_ctx {args.ctx}, threads {threads}, trials {args.trials}"
    )
    a = bare(path, args.ctx, threads, args.trials + 1)[1:]  # the first trial warms the page cache
    b, loads = appliance(path, args.ctx, threads, args.trials)
    ma, mb = median(a), median(b)
    print(
        f"(a) bare llama-cpp-python Llama() + first token: median {ma:.1f} ms  (all: {', '.join(f'{x:.0f}' for x in a)})"
    )
    print(
        f"(b) appliance, idle-unloaded model, first token over HTTP: median {mb:.1f} ms  (all: {', '.join(f'{x:.0f}' for x in b)})"
    )
    print(f"    of which model load in the worker: median {median(loads):.1f} ms")
    print(f"ratio b/a: {mb / ma:.3f}  (target <= 1.1)")
    return 0
