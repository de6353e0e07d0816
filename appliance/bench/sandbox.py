"""`appliance bench sandbox`: what a sandboxed run costs, against a bare process.

In one run, each measured at the client, p50 and p95 over --runs requests of `print(1)`:
(a) a bare `python3 -c 'print(1)'` subprocess, no sandbox, with the interpreter the python
    profile resolves to (the sandboxes' own);
(b) the same code through `POST /api/run` of a real `appliance serve` with the warm pool on, the
    pool given time to refill between requests, and back to back (the pool may run dry);
(c) the same with the pool off (a fresh sandbox and interpreter per request);
(d) `POST /api/sandboxes` plus the first `exec` (a stateful session from the pool);
and the throughput of --concurrency simultaneous runs, with the pool and without. The target is
(b) p50 below (a) p50: a pooled sandboxed run answers before a bare interpreter has started.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from appliance.bench.harness import bench_daemon, pct
from appliance.errors import ApplianceError

CODE = "print(1)"


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "sandbox", help="sandboxed runs (pooled, cold, stateful) against a bare python3"
    )
    p.add_argument("--runs", type=int, default=40, help="requests per measurement (default 40)")
    p.add_argument("--concurrency", type=int, default=50, help="simultaneous runs for throughput")
    p.add_argument("--pool", type=int, default=2, help="warm python sandboxes (default 2)")
    p.set_defaults(func=run)


def _row(name: str, samples: list[float]) -> str:
    return f"  {name:<46} p50 {pct(samples, 0.5):7.1f} ms   p95 {pct(samples, 0.95):7.1f} ms   (n={len(samples)})"


def bare_python(exe: str, runs: int) -> list[float]:
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        done = subprocess.run([exe, "-c", CODE], capture_output=True)
        out.append((time.perf_counter() - t0) * 1000)
        if done.stdout != b"1\n":
            raise ApplianceError(f"{exe} printed {done.stdout!r}")
    return out


@contextmanager
def daemon(pool: dict[str, int]) -> Iterator[str]:
    """A throwaway `appliance serve` (no models, no spare worker) with the given warm pool."""
    pool_toml = ", ".join(f"{k} = {v}" for k, v in pool.items())
    with bench_daemon(
        {},
        models_config="spare_worker = false",
        sandbox_config=f"pool = {{{pool_toml}}}\nmax_concurrent = 4",
    ) as d:
        _wait(d.url, d.proc, d.root, pool)
        yield d.url


def _pool_ready(c: httpx.Client, pool: dict[str, int]) -> bool:
    status = c.get("/api/status").json()["sandboxes"]
    if not status["available"]:
        raise ApplianceError(f"the daemon cannot run sandboxes: {status['reason']}")
    return all((status["pool"].get(k) or {}).get("ready", 0) >= v for k, v in pool.items() if v)


def _wait(url: str, proc: subprocess.Popen[bytes], root: Path, pool: dict[str, int]) -> None:
    deadline = time.monotonic() + 90
    with httpx.Client(base_url=url, timeout=10) as c:
        while True:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise ApplianceError(
                    "the benchmark daemon did not start: "
                    + (root / "daemon.log").read_text()[-2000:]
                )
            try:
                if c.get("/api/health").status_code == 200 and _pool_ready(c, pool):
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)


def _wait_pool(c: httpx.Client, pool: dict[str, int], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not _pool_ready(c, pool) and time.monotonic() < deadline:
        time.sleep(0.005)


def timed_runs(
    c: httpx.Client, runs: int, between: Callable[[], None] | None = None
) -> list[float]:
    out = []
    for _ in range(runs):
        if between is not None:
            between()
        t0 = time.perf_counter()
        r = c.post("/api/run", json={"language": "python", "code": CODE})
        out.append((time.perf_counter() - t0) * 1000)
        if r.status_code != 200 or r.json()["stdout"] != "1\n":
            raise ApplianceError(f"run failed: {r.status_code} {r.text[:300]}")
    return out


def create_and_exec(c: httpx.Client, runs: int, pool: dict[str, int]) -> list[float]:
    out = []
    for _ in range(runs):
        _wait_pool(c, pool)
        t0 = time.perf_counter()
        r = c.post("/api/sandboxes", json={"language": "python"})
        sid = r.json()["id"]
        e = c.post(f"/api/sandboxes/{sid}/exec", json={"code": CODE})
        out.append((time.perf_counter() - t0) * 1000)
        if e.status_code != 200 or e.json()["stdout"] != "1\n":
            raise ApplianceError(f"exec failed: {e.status_code} {e.text[:300]}")
        c.delete(f"/api/sandboxes/{sid}")
    return out


async def _burst(url: str, n: int) -> tuple[float, int]:
    async with httpx.AsyncClient(base_url=url, timeout=300) as c:
        t0 = time.perf_counter()
        responses = await asyncio.gather(
            *(
                c.post("/api/run", json={"language": "python", "code": f"print({i})"})
                for i in range(n)
            )
        )
        wall = time.perf_counter() - t0
    good = sum(
        1
        for i, r in enumerate(responses)
        if r.status_code == 200 and r.json()["stdout"] == f"{i}\n"
    )
    return wall, good


def throughput(url: str, n: int) -> str:
    wall, good = asyncio.run(_burst(url, n))
    return f"{n} concurrent runs in {wall * 1000:.0f} ms: {n / wall:.1f} runs/s, {good}/{n} correct"


def run(args: argparse.Namespace) -> int:
    from appliance.config import shipped_profiles_dir
    from appliance.sandbox.profiles import ProfileCatalog

    python = (
        ProfileCatalog.load([shipped_profiles_dir() / "sandboxes"])
        .resolve("python")
        .tools["python"]
        .exe
    )
    print(f"sandbox benchmark: {args.runs} runs each, python = {python}, {os.cpu_count()} CPUs")
    bare = bare_python(python, args.runs)
    lines = [_row("(a) bare python3 -c 'print(1)' subprocess", bare)]
    system = "/usr/bin/python3"
    if os.path.exists(system) and os.path.realpath(system) != python:
        # for reference: the distribution's interpreter, often faster to start (fewer site-packages)
        lines.append(_row(f"(a') the same with {system}", bare_python(system, args.runs)))

    pool = {"python": args.pool}
    with daemon(pool) as url, httpx.Client(base_url=url, timeout=120) as c:
        timed_runs(c, 3)  # warm the HTTP path
        _wait_pool(c, pool)
        paced = timed_runs(c, args.runs, between=lambda: _wait_pool(c, pool))
        back_to_back = timed_runs(c, args.runs)
        _wait_pool(c, pool)
        session = create_and_exec(c, args.runs, pool)
        _wait_pool(c, pool)
        pooled_burst = throughput(url, args.concurrency)
    lines += [
        _row("(b) POST /api/run, warm pool (refilled between)", paced),
        _row("(b') POST /api/run, warm pool, back to back", back_to_back),
    ]
    with daemon({}) as url, httpx.Client(base_url=url, timeout=120) as c:
        timed_runs(c, 3)
        cold = timed_runs(c, args.runs)
        cold_burst = throughput(url, args.concurrency)
    lines += [
        _row("(c) POST /api/run, pool off", cold),
        _row("(d) POST /api/sandboxes + first exec", session),
        f"  throughput, pool on:  {pooled_burst}",
        f"  throughput, pool off: {cold_burst}",
    ]
    print("\n".join(lines))
    verdict = "met" if pct(paced, 0.5) < pct(bare, 0.5) else "NOT met"
    print(
        f"target (b) p50 < (a) p50: {verdict} ({pct(paced, 0.5):.1f} ms vs {pct(bare, 0.5):.1f} ms)"
    )
    return 0
