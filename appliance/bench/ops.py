"""`appliance bench ops`: what the operations layer costs each request.

The same app is driven in-process (httpx over ASGI, no sockets, so the numbers are the app's
own) with and without the per-request wrappers: the request telemetry (trace, X-Trace-Id, route
metrics, log line) and the bearer-token check (a store lookup on the store's thread pool). Three
cases: a route the token check skips (/api/health), an open box (the check counts tokens), and a
box with a token (the check verifies it). It also times a /metrics scrape. It prints microseconds
per request (median of several rounds); it asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import tempfile
import time
from typing import Any

import httpx


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("ops", help="per-request cost of tracing, metrics and the token check")
    p.add_argument("--requests", type=int, default=500, help="requests per round")
    p.add_argument("--rounds", type=int, default=5)
    p.set_defaults(func=run)


async def _per_request_us(app: Any, path: str, n: int, rounds: int, headers: dict[str, str]) -> float:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1", headers=headers) as c:
        for _ in range(50):  # warm up
            await c.get(path)
        results = []
        for _ in range(rounds):
            t0 = time.perf_counter()
            for _ in range(n):
                r = await c.get(path)
            results.append((time.perf_counter() - t0) / n * 1e6)
            assert r.status_code == 200, r.text
    return statistics.median(results)


async def _bench(n: int, rounds: int) -> None:
    from appliance.api.app import create_app
    from appliance.config import load_config
    from appliance.services.container import Appliance

    with tempfile.TemporaryDirectory() as state:
        appliance = await asyncio.to_thread(Appliance.from_config, load_config(None, state_dir=state))
        await appliance.operations.start()
        full = create_app(appliance, manage_lifecycle=False)
        bare = create_app(appliance, manage_lifecycle=False)
        bare.asgi_handler = bare.asgi_handler.app.app  # type: ignore[attr-defined]  # unwrap both layers
        try:
            rows = []
            for path in ("/api/health", "/v1/models"):
                base = await _per_request_us(bare, path, n, rounds, {})
                open_box = await _per_request_us(full, path, n, rounds, {})
                rows.append((path, "open box", base, open_box))
            token = (await appliance.store.run(appliance.store.tokens.create, "bench")).plain
            auth = {"Authorization": f"Bearer {token}"}
            base = await _per_request_us(bare, "/v1/models", n, rounds, auth)
            guarded = await _per_request_us(full, "/v1/models", n, rounds, auth)
            rows.append(("/v1/models", "with a token", base, guarded))
            scrape = await _per_request_us(full, "/metrics", max(20, n // 10), rounds, auth)
        finally:
            await appliance.operations.stop()
            await appliance.store.aclose()
    print(f"{'route':14} {'case':13} {'bare us':>9} {'wrapped us':>11} {'overhead us':>12}")
    for path, case, b, w in rows:
        print(f"{path:14} {case:13} {b:9.1f} {w:11.1f} {w - b:12.1f}")
    print(f"/metrics scrape (models, sessions, host and GPU gauges, render): {scrape / 1000:.2f} ms")


def run(args: argparse.Namespace) -> int:
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request would drown the table
    asyncio.run(_bench(args.requests, args.rounds))
    return 0
