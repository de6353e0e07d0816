"""`appliance bench serve`: many streams on one model, the appliance beside llama.cpp's llama-server.

For each level of concurrency (1, 2, 4, 8, 16 by default), that many streamed completions start
together on one model; each has its own prompt, temperature 0, and the end-of-generation tokens
banned (logit_bias -100) so every request decodes exactly `--tokens` tokens. Printed per level:
the aggregate completion tokens/s (all tokens over the wall time of the round), time to first
token p50/p95 and inter-token latency p50/p95, measured at the HTTP client.

With `--llama-server BIN` the same rounds run against llama-server on the same GGUF, with the
same slots (`-np`), context per slot and threads, in the same run, one round on each in turn so
both see the same machine; the table shows both. CPU milliseconds per token (the servers' processes, the
appliance's workers included) say what each costs whatever else the machine is doing. Build
it from the llama.cpp source vendored in llama-cpp-python's sdist (see the README).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil

from appliance.bench.harness import (
    bench_daemon,
    free_port,
    pct,
    resolve_model,
    wait_spare,
    wait_state,
)

LEVELS = (1, 2, 4, 8, 16)
PROMPTS = (
    "Once upon a time, in a small village by the sea, there lived",
    "The recipe for a good loaf of bread begins with",
    "In the year 2150, the first city on Mars",
    "Here is a short guide to repairing a bicycle tyre:",
    "The history of the printing press starts",
    "Dear diary, today I finally",
    "A list of reasons to learn a second language:",
    "The old lighthouse keeper looked at the storm and",
)


@dataclass
class Round:
    n: int
    wall_s: float
    tokens: int
    ttft_ms: list[float]
    itl_ms: list[float]
    cpu_s: float = 0.0
    """CPU time the server's processes used during the round."""

    @property
    def tps(self) -> float:
        return self.tokens / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def cpu_ms_per_token(self) -> float:
        return self.cpu_s * 1000.0 / self.tokens if self.tokens else 0.0


@dataclass
class Server:
    base: str
    pid: int

    def cpu_s(self) -> float:
        """User + system time of the server and its children (the appliance's workers)."""
        total = 0.0
        with contextlib.suppress(psutil.Error):
            proc = psutil.Process(self.pid)
            for p in [proc, *proc.children(recursive=True)]:
                with contextlib.suppress(psutil.Error):
                    t = p.cpu_times()
                    total += t.user + t.system
        return total


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("serve", help="aggregate tokens/s, TTFT and ITL under concurrent streams")
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--gguf", help="a GGUF path instead of --model")
    p.add_argument("--levels", default=",".join(map(str, LEVELS)), help="concurrent requests")
    p.add_argument("--tokens", type=int, default=128, help="completion tokens per request")
    p.add_argument("--parallel", type=int, default=8, help="slots (sequences) of the model")
    p.add_argument("--ctx", type=int, default=1024, help="context per slot")
    p.add_argument("--threads", type=int, default=0, help="0: every core")
    p.add_argument("--trials", type=int, default=1, help="rounds per level (the best is shown)")
    p.add_argument(
        "--flash-attention", action="store_true", help="the profile's flash_attention on"
    )
    p.add_argument("--llama-server", dest="llama_server", help="llama-server binary to compare")
    p.add_argument("--config", type=Path)
    p.add_argument("--state-dir")
    p.set_defaults(func=run)


def eog_bias(gguf: Path) -> dict[str, float]:
    """-100 on every end-of-generation token of the model's vocabulary."""
    import llama_cpp

    params = llama_cpp.llama_model_default_params()
    params.vocab_only = True
    model = llama_cpp.llama_model_load_from_file(str(gguf).encode(), params)
    try:
        vocab = llama_cpp.llama_model_get_vocab(model)
        n = llama_cpp.llama_vocab_n_tokens(vocab)
        return {str(t): -100.0 for t in range(n) if llama_cpp.llama_vocab_is_eog(vocab, t)}
    finally:
        llama_cpp.llama_model_free(model)


async def one(
    c: httpx.AsyncClient, url: str, body: dict[str, object], t0: float
) -> tuple[float, list[float], int]:
    """(ms to the first text, gaps between texts in ms, completion tokens): the tokens as the
    final usage says, else the text chunks received."""
    stamps: list[float] = []
    used: int | None = None
    async with c.stream("POST", url, json=body) as r:
        if r.status_code != 200:
            raise RuntimeError(f"{url}: {r.status_code} {(await r.aread())[:300]!r}")
        async for line in r.aiter_lines():
            if not line.startswith("data: {"):
                continue
            chunk = json.loads(line[6:])
            choices = chunk.get("choices") or [{}]
            if choices[0].get("text"):
                stamps.append(time.perf_counter())
            if isinstance(chunk.get("usage"), dict):
                used = int(chunk["usage"].get("completion_tokens") or 0)
    if not stamps:
        return 0.0, [], used or 0
    gaps = [(b - a) * 1000.0 for a, b in itertools.pairwise(stamps)]
    return (stamps[0] - t0) * 1000.0, gaps, used if used is not None else len(stamps)


async def round_(base: str, model: str, n: int, tokens: int, bias: dict[str, float]) -> Round:
    limits = httpx.Limits(max_connections=n + 4, max_keepalive_connections=n + 4)
    async with httpx.AsyncClient(base_url=base, timeout=600, limits=limits) as c:
        bodies = [
            {
                "model": model,
                "prompt": f"Story {i}. {PROMPTS[i % len(PROMPTS)]}",
                "max_tokens": tokens,
                "temperature": 0,
                "stream": True,
                "stream_options": {"include_usage": True},
                "logit_bias": bias,
            }
            for i in range(n)
        ]
        t0 = time.perf_counter()
        results = await asyncio.gather(*(one(c, "/v1/completions", b, t0) for b in bodies))
        wall = time.perf_counter() - t0
    return Round(
        n=n,
        wall_s=wall,
        tokens=sum(r[2] for r in results),
        ttft_ms=[r[0] for r in results],
        itl_ms=[g for r in results for g in r[1]],
    )


def rounds(
    servers: list[Server], levels: list[int], args: argparse.Namespace, bias: dict[str, float]
) -> list[dict[int, Round]]:
    """For each level, a round on each server in turn (trials times), so that both see the same
    machine; the best round of each is kept."""
    for s in servers:
        asyncio.run(round_(s.base, "bench", 1, 8, bias))  # warm-up
    out: list[dict[int, Round]] = [{} for _ in servers]
    for n in levels:
        for _ in range(max(1, args.trials)):
            for i, s in enumerate(servers):
                cpu0 = s.cpu_s()
                r = asyncio.run(round_(s.base, "bench", n, args.tokens, bias))
                r.cpu_s = s.cpu_s() - cpu0
                best = out[i].get(n)
                if best is None or r.tps > best.tps:
                    out[i][n] = r
    return out


@contextlib.contextmanager
def llama_server(
    bin_path: str, gguf: Path, args: argparse.Namespace, threads: int
) -> Iterator[Server]:
    port = free_port()
    log = open(os.devnull, "wb")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen(
        [
            bin_path,
            "-m", str(gguf),
            "--host", "127.0.0.1",
            "--port", str(port),
            "-np", str(args.parallel),
            "-c", str(args.ctx * args.parallel),
            "-t", str(threads),
            "-tb", str(threads),
            "--no-warmup",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(base + "/health", timeout=1).status_code == 200:
                    break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"llama-server did not start (exit {proc.poll()})")
            time.sleep(0.2)
        yield Server(base, proc.pid)
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def run(args: argparse.Namespace) -> int:
    path = resolve_model(args.model, args.gguf, args.config, args.state_dir)
    threads = args.threads or os.cpu_count() or 1
    levels = [int(x) for x in args.levels.split(",") if x.strip()]
    bias = eog_bias(path)
    print(
        f"model file: {path}; {args.tokens} tokens per request (end of generation banned), "
        f"parallel {args.parallel}, context {args.ctx} per slot, threads {threads}"
    )
    profile = {
        "source": str(path),
        "context_size": args.ctx,
        "parallel": args.parallel,
        "threads": threads,
        "idle_ttl_s": -1,
        "max_tokens": args.tokens,
        "flash_attention": args.flash_attention,
    }
    with contextlib.ExitStack() as stack:
        d = stack.enter_context(bench_daemon({"bench": profile}))
        c = stack.enter_context(d.http())
        wait_spare(d)
        c.post("/api/models/bench/load")
        wait_state(d, "bench", "ready")
        servers = [Server(d.url, d.proc.pid)]
        if args.llama_server:
            servers.append(
                stack.enter_context(llama_server(args.llama_server, path, args, threads))
            )
        results = rounds(servers, levels, args, bias)
    ours = results[0]
    theirs = results[1] if len(results) > 1 else {}
    cols = f"{'tok/s':>7} {'TTFT p50/p95':>13} {'ITL p50/p95':>12} {'CPU ms/tok':>10}"
    head = f"{'streams':>7} | appliance: {cols}"
    if theirs:
        head += f" | llama-server: {cols} | ratio tok/s, CPU/tok"
    print(head)
    for n in levels:
        a = ours[n]
        line = f"{n:>7} |            {_cells(a)}"
        if n in theirs:
            b = theirs[n]
            ratio = a.cpu_ms_per_token / b.cpu_ms_per_token if b.cpu_ms_per_token else 0.0
            line += f" |               {_cells(b)} | {a.tps / b.tps:.2f}x, {ratio:.2f}x"
        print(line)
    for name, rs in (("appliance", ours), ("llama-server", theirs)):
        for n, r in rs.items():
            if r.tokens < n * args.tokens:
                print(
                    f"note: {name} at {n} streams generated {r.tokens} tokens, not {n * args.tokens}"
                )
    if theirs:
        print("targets: aggregate at 8 and 16 >= llama-server's; TTFT p95 at 8 <= llama-server's")
    return 0


def _cells(r: Round) -> str:
    return f"{r.tps:>7.1f} {_pair(r.ttft_ms):>13} {_pair(r.itl_ms):>12} {r.cpu_ms_per_token:>10.2f}"


def _pair(values: list[float]) -> str:
    if not values:
        return "-"
    return f"{pct(values, 0.5):.0f}/{pct(values, 0.95):.0f}"
