"""`appliance bench wakeup`: how long an idle-unloaded model takes to answer, against bare llama.cpp.

(a) bare llama-cpp-python in this process (already imported): `Llama(...)` plus the first token.
(b) the appliance: the first token of a streamed request to a model that was unloaded, with the
    spare worker ready, measured at the HTTP client.
Both use the same file, context size, threads, prompt and OpenMP spin count. The trials
alternate, one bare then one appliance, so both see the same machine: on a small box that other
work shares, the load drifts within a run, and two blocks of trials, one after the other, compared
the neighbours' work more than the two paths. The target is b/a <= 1.1.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import httpx

from appliance.bench.harness import (
    BenchDaemon,
    bare_llama,
    bench_daemon,
    first_token_ms,
    median,
    peer_runs_like_workers,
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


def bare_once(path: Path, ctx: int, threads: int) -> float:
    """One bare trial: `Llama()` and the first token, in ms (llama_cpp is imported already)."""
    t0 = time.perf_counter()
    llm = bare_llama(path, ctx, threads)
    for _chunk in llm.create_completion(PROMPT, max_tokens=1, temperature=0, stream=True):
        break
    ms = (time.perf_counter() - t0) * 1000.0
    llm.close()
    del llm
    return ms


def unload_and_settle(d: BenchDaemon, c: httpx.Client) -> None:
    """Unload the model and wait until the daemon is quiet again, its spare worker started."""
    c.post("/api/models/bench/unload")
    wait_state(d, "bench", "unloaded")
    wait_spare(d)
    time.sleep(0.3)  # let the machine settle after the spare's start-up


def appliance_once(c: httpx.Client) -> tuple[float, float]:
    """The first token of a request to the unloaded model; returns (first token ms, load ms in
    the scheduler)."""
    ms = first_token_ms(c, {"model": "bench", "prompt": PROMPT, "max_tokens": 1, "temperature": 0})
    return ms, float(c.get("/api/models/bench").json()["last_load_ms"] or 0)


def trials(
    path: Path, ctx: int, threads: int, n: int
) -> tuple[list[float], list[float], list[float]]:
    """`n` rounds of one bare trial then one appliance trial: (bare, appliance, loads). Each
    round starts with the model unloaded and the daemon quiet (its next spare started), so
    neither trial runs beside the daemon's background work."""
    import llama_cpp  # noqa: F401  (imported before the clock starts: an import is no load)

    a: list[float] = []
    b: list[float] = []
    loads: list[float] = []
    profile = {"source": str(path), "context_size": ctx, "threads": threads, "idle_ttl_s": 1}
    with bench_daemon({"bench": profile}) as d, d.http() as c:
        c.post("/api/models/bench/load")  # warms the page cache for both
        bare_once(path, ctx, threads)  # the first in this process pays one-time set-up: dropped
        for _ in range(n):
            unload_and_settle(d, c)
            a.append(bare_once(path, ctx, threads))
            time.sleep(0.3)
            ms, load = appliance_once(c)
            b.append(ms)
            loads.append(load)
    return a, b, loads


def run(args: argparse.Namespace) -> int:
    peer = peer_runs_like_workers()  # before anything imports llama_cpp
    path = resolve_model(args.model, args.gguf, args.config, args.state_dir)
    threads = os.cpu_count() or 1
    print(
        f"model file: {path} ({path.stat().st_size / 2**20:.1f} MiB), n_ctx {args.ctx}, threads {threads}, "
        f"trials {args.trials}; {peer}"
    )
    load0 = os.getloadavg()
    a, b, loads = trials(path, args.ctx, threads, args.trials)
    load1 = os.getloadavg()
    ma, mb = median(a), median(b)
    print(
        f"(a) bare llama-cpp-python Llama() + first token: median {ma:.1f} ms  (all: {', '.join(f'{x:.0f}' for x in a)})"
    )
    print(
        f"(b) appliance, idle-unloaded model, first token over HTTP: median {mb:.1f} ms  (all: {', '.join(f'{x:.0f}' for x in b)})"
    )
    print(f"    of which model load in the worker: median {median(loads):.1f} ms")
    paired = median([y / x for x, y in zip(a, b, strict=True)])
    print(
        f"ratio b/a: {mb / ma:.3f}  (target <= 1.1); median of the paired trials' ratios {paired:.3f}"
    )
    print(
        f"load average (1 min): before {load0[0]:.2f}, after {load1[0]:.2f} "
        "(above ~1 other work shared the cores: rerun for a figure to quote)"
    )
    return 0
