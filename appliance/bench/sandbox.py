"""`appliance bench sandbox`: what a sandboxed run costs, against a bare process.

In one run, each measured at the client, p50 and p95 over --runs requests of `print(1)`:
(a) a bare `python3 -c 'print(1)'` subprocess, no sandbox, with the interpreter the python
    profile resolves to (the sandboxes' own);
(b) the same code through `POST /api/run` of a real `appliance serve` with the warm pool on, the
    pool given time to refill between requests, and back to back (the pool may run dry);
(c) the same with the pool off (a fresh sandbox and interpreter per request);
(d) `POST /api/sandboxes` plus the first `exec` (a stateful session from the pool);
then sustained throughput: 1, 8 and 50 clients each sending runs back to back for --seconds,
pool on and off, beside bare python3 processes and bare `bwrap --unshare-all ... python3 -S`
started by as many threads; and a batch of --cases C test cases (`POST /api/run/batch`, one
compile) against the same cases sent as separate `POST /api/run` calls.
Targets: (b) p50 below (a) p50; 50-client throughput at least 0.7x bare python3's; the batch at
least 5x faster than the separate calls.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import shutil
import subprocess
import threading
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
    p.add_argument(
        "--seconds", type=float, default=5.0, help="length of each throughput measurement"
    )
    p.add_argument(
        "--clients", default="1,8,50", help="client counts of the throughput table (default 1,8,50)"
    )
    p.add_argument("--cases", type=int, default=200, help="C test cases of the batch comparison")
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
        sandbox_config=f"pool = {{{pool_toml}}}\nqueue_size = 1024",
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


def sustained(one: Callable[[], None], clients: int, seconds: float) -> float:
    """Runs per second of `clients` threads each calling `one` back to back for `seconds`."""
    done = [0] * clients
    stop = time.monotonic() + seconds
    errors: list[BaseException] = []

    def client(i: int) -> None:
        try:
            while time.monotonic() < stop:
                one()
                done[i] += 1
        except BaseException as exc:  # reported after the measurement
            errors.append(exc)

    t0 = time.monotonic()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise ApplianceError(f"a client failed during the throughput measurement: {errors[0]}")
    return sum(done) / (time.monotonic() - t0)


def process_runner(argv: list[str]) -> Callable[[], None]:
    def one() -> None:
        done = subprocess.run(argv, capture_output=True)
        if done.stdout != b"1\n":
            raise ApplianceError(f"{argv[0]} printed {done.stdout!r} {done.stderr[-300:]!r}")

    return one


def bare_bwrap_argv(python: str, roots: list[str]) -> list[str] | None:
    """bwrap with fresh namespaces and the system and interpreter read-only, nothing else."""
    from appliance.sandbox.bwrap import locate_bwrap

    try:
        bwrap = str(locate_bwrap(""))
    except ApplianceError:
        return None
    argv = [bwrap, "--unshare-all", "--die-with-parent", "--ro-bind", "/usr", "/usr"]
    for link in ("bin", "lib", "lib64", "sbin"):
        if os.path.islink(f"/{link}"):
            argv += ["--symlink", os.readlink(f"/{link}"), f"/{link}"]
    for root in roots:
        if not root.startswith("/usr/"):
            argv += ["--ro-bind", root, root]
    return [*argv, "--proc", "/proc", "--dev", "/dev", python, "-S", "-c", CODE]


def api_runner(url: str) -> Callable[[], None]:
    local = threading.local()

    def one() -> None:
        c = getattr(local, "client", None)
        if c is None:
            c = local.client = httpx.Client(base_url=url, timeout=300)
        r = c.post("/api/run", json={"language": "python", "code": CODE})
        if r.status_code != 200 or r.json()["stdout"] != "1\n":
            raise ApplianceError(f"run failed: {r.status_code} {r.text[:300]}")

    return one


C_CASE = '#include <stdio.h>\nint main(void) { long a, b; scanf("%ld %ld", &a, &b); printf("%ld\\n", a * b); return 0; }\n'


def batch_vs_calls(url: str, cases: int) -> list[str]:
    """A batch of C cases (one compile) against the same cases as separate /api/run calls."""
    items = [{"stdin": f"{i} 3", "expected_stdout": f"{i * 3}\n"} for i in range(cases)]
    with httpx.Client(base_url=url, timeout=600) as c:
        t0 = time.perf_counter()
        r = c.post("/api/run/batch", json={"language": "c", "code": C_CASE, "cases": items})
        batch_s = time.perf_counter() - t0
        body = r.json()
        if r.status_code != 200 or body["passed"] != cases:
            raise ApplianceError(f"the batch failed: {r.status_code} {r.text[:300]}")

    async def separate() -> float:
        async with httpx.AsyncClient(base_url=url, timeout=600) as ac:
            t0 = time.perf_counter()
            replies = await asyncio.gather(
                *(
                    ac.post("/api/run", json={"language": "c", "code": C_CASE, "stdin": f"{i} 3"})
                    for i in range(cases)
                )
            )
            wall = time.perf_counter() - t0
        bad = [r for i, r in enumerate(replies) if r.json().get("stdout") != f"{i * 3}\n"]
        if bad:
            raise ApplianceError(f"{len(bad)} separate runs failed: {bad[0].text[:300]}")
        return wall

    calls_s = asyncio.run(separate())
    return [
        f"  {cases} C cases, one POST /api/run/batch: {batch_s * 1000:8.0f} ms",
        f"  {cases} C cases, separate POST /api/run: {calls_s * 1000:8.0f} ms"
        f"   (batch {calls_s / batch_s:.1f}x faster; target 5x)",
    ]


def run(args: argparse.Namespace) -> int:
    from appliance.config import shipped_profiles_dir
    from appliance.sandbox.profiles import ProfileCatalog

    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per request is noise here
    lang = ProfileCatalog.load([shipped_profiles_dir() / "sandboxes"]).resolve("python")
    python = lang.tools["python"].exe
    clients = [int(n) for n in args.clients.split(",") if n.strip()]
    print(f"sandbox benchmark: {args.runs} runs each, python = {python}, {os.cpu_count()} CPUs")
    bare = bare_python(python, args.runs)
    lines = [_row("(a) bare python3 -c 'print(1)' subprocess", bare)]
    system = "/usr/bin/python3"
    fastest_bare = bare
    if os.path.exists(system) and os.path.realpath(system) != python:
        # for reference: the distribution's interpreter, often faster to start (fewer site-packages)
        system_bare = bare_python(system, args.runs)
        lines.append(_row(f"(a') the same with {system}", system_bare))
        fastest_bare = min(bare, system_bare, key=lambda xs: pct(xs, 0.5))

    rates: dict[str, list[float]] = {}
    rates["bare python3 -c"] = [
        sustained(process_runner([python, "-c", CODE]), n, args.seconds) for n in clients
    ]
    if os.path.exists(system) and os.path.realpath(system) != python:
        rates[f"bare {system} -c"] = [
            sustained(process_runner([system, "-c", CODE]), n, args.seconds) for n in clients
        ]
    bwrap_argv = bare_bwrap_argv(python, [str(r) for r in lang.toolchain_roots])
    if bwrap_argv is not None:
        rates["bare bwrap ... python3 -S -c"] = [
            sustained(process_runner(bwrap_argv), n, args.seconds) for n in clients
        ]
    pool = {"python": args.pool}
    with daemon(pool) as url, httpx.Client(base_url=url, timeout=120) as c:
        timed_runs(c, 3)  # warm the HTTP path
        _wait_pool(c, pool)
        paced = timed_runs(c, args.runs, between=lambda: _wait_pool(c, pool))
        back_to_back = timed_runs(c, args.runs)
        _wait_pool(c, pool)
        session = create_and_exec(c, args.runs, pool)
        rates["POST /api/run, pool on"] = []
        for n in clients:
            _wait_pool(c, pool)
            rates["POST /api/run, pool on"].append(sustained(api_runner(url), n, args.seconds))
        batch_lines = batch_vs_calls(url, args.cases) if shutil.which("gcc") else []
    lines += [
        _row("(b) POST /api/run, warm pool (refilled between)", paced),
        _row("(b') POST /api/run, warm pool, back to back", back_to_back),
    ]
    with daemon({}) as url, httpx.Client(base_url=url, timeout=120) as c:
        timed_runs(c, 3)
        cold = timed_runs(c, args.runs)
        rates["POST /api/run, pool off"] = [
            sustained(api_runner(url), n, args.seconds) for n in clients
        ]
    lines += [
        _row("(c) POST /api/run, pool off", cold),
        _row("(d) POST /api/sandboxes + first exec", session),
        "",
        f"  sustained runs/s over {args.seconds:.0f} s"
        + "".join(f"{f'{n} clients':>12}" for n in clients),
    ]
    for name, row in rates.items():
        lines.append(f"  {name:<36}" + "".join(f"{r:12.1f}" for r in row))
    # the stricter reference: the faster of the two bare interpreters
    bare_top = max(
        row[-1]
        for name, row in rates.items()
        if name.startswith("bare python3") or name.startswith(f"bare {system}")
    )
    ours = rates["POST /api/run, pool on"][-1]
    lines.append(
        f"  {clients[-1]} clients, pool on vs the faster bare python3: {ours / bare_top:.2f}x"
        " (target 0.7x)"
    )
    lines += ["", *batch_lines]
    print("\n".join(lines))
    # the start-up target: a pooled run back to back against the faster bare interpreter
    ours_p50, bare_p50 = pct(back_to_back, 0.5), pct(fastest_bare, 0.5)
    verdict = "met" if ours_p50 < bare_p50 else "NOT met"
    print(
        f"target (b') back-to-back p50 < the faster bare python3 p50: {verdict}"
        f" ({ours_p50:.1f} ms vs {bare_p50:.1f} ms)"
    )
    return 0
