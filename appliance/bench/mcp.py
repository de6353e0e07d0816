"""`appliance bench mcp`: what MCP costs over the plain API, for the same code run.

In one run, against one throwaway `appliance serve` (no models, a warm python pool), p50 and p95
over --runs calls of `print(1)`, each timed at the client, the pool given time to refill before
each call and the kinds of call interleaved so they meet the same conditions:
(a) `POST /api/run`, over one kept-alive HTTP connection;
(b) the MCP `run_code` tool through `/mcp` with the official SDK's client, on one session of the
    2025-11-25 handshake (SSE answers);
(c) the same on the 2026-07-28 protocol (each call a self-contained request);
(d) the 2026-07-28 `tools/call` as a bare JSON-RPC POST with httpx, no SDK client: the server's
    share of the difference, (c) - (d) being the SDK client's own (validating the result against
    the tool's output schema, its envelope).
The difference (b) - (a) is what MCP adds to a sandboxed run, as an SDK user sees it.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

import httpx

from appliance.bench.harness import pct
from appliance.bench.sandbox import CODE, _pool_ready, daemon
from appliance.errors import ApplianceError

MODERN = "2026-07-28"
BARE_CALL = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "tools/call",
    "params": {
        "name": "run_code",
        "arguments": {"language": "python", "code": CODE},
        "_meta": {
            "io.modelcontextprotocol/protocolVersion": MODERN,
            "io.modelcontextprotocol/clientCapabilities": {},
        },
    },
}
BARE_HEADERS = {
    "Accept": "application/json, text/event-stream",
    "MCP-Protocol-Version": MODERN,
    "Mcp-Method": "tools/call",
    "Mcp-Name": "run_code",
}


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("mcp", help="an MCP run_code call against the same POST /api/run")
    p.add_argument("--runs", type=int, default=40, help="calls of each kind (default 40)")
    p.add_argument("--pool", type=int, default=2, help="warm python sandboxes (default 2)")
    p.set_defaults(func=run)


def _row(name: str, samples: list[float]) -> str:
    return f"  {name:<44} p50 {pct(samples, 0.5):7.1f} ms   p95 {pct(samples, 0.95):7.1f} ms   (n={len(samples)})"


async def measure(url: str, runs: int, pool: dict[str, int]) -> dict[str, list[float]]:
    import httpx2
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client

    api = httpx.AsyncClient(base_url=url, timeout=60)
    legacy_http = httpx2.AsyncClient(timeout=60)
    modern_http = httpx2.AsyncClient(timeout=60)
    async with (
        api,
        legacy_http,
        modern_http,
        Client(
            streamable_http_client(url + "/mcp", http_client=legacy_http), mode="legacy"
        ) as legacy,
        Client(
            streamable_http_client(url + "/mcp", http_client=modern_http), mode=MODERN
        ) as modern,
    ):

        async def over_api() -> None:
            r = await api.post("/api/run", json={"language": "python", "code": CODE})
            if r.status_code != 200 or r.json()["stdout"] != "1\n":
                raise ApplianceError(f"POST /api/run failed: {r.status_code} {r.text[:300]}")

        def over_mcp(client: Client) -> Callable[[], Awaitable[None]]:
            async def call() -> None:
                result = await client.call_tool("run_code", {"language": "python", "code": CODE})
                out = result.structured_content or {}
                if result.is_error or out.get("stdout") != "1\n":
                    raise ApplianceError(f"MCP run_code failed: {result.content}")

            return call

        async def bare_json_rpc() -> None:
            r = await api.post("/mcp", json=BARE_CALL, headers=BARE_HEADERS)
            out = r.json().get("result", {}) if r.status_code == 200 else {}
            if out.get("isError", True) or out["structuredContent"]["stdout"] != "1\n":
                raise ApplianceError(f"bare tools/call failed: {r.status_code} {r.text[:300]}")

        kinds: dict[str, Callable[[], Awaitable[None]]] = {
            "(a) POST /api/run": over_api,
            "(b) MCP run_code, 2025-11-25 session": over_mcp(legacy),
            "(c) MCP run_code, 2026-07-28 request": over_mcp(modern),
            "(d) bare JSON-RPC tools/call, 2026-07-28": bare_json_rpc,
        }
        samples: dict[str, list[float]] = {k: [] for k in kinds}
        for i in range(runs + 2):  # two rounds of warm-up: connections, first imports
            for name, call in kinds.items():
                await _refilled(api, pool)
                t0 = time.perf_counter()
                await call()
                if i >= 2:
                    samples[name].append((time.perf_counter() - t0) * 1000)
        return samples


async def _refilled(c: httpx.AsyncClient, pool: dict[str, int], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = (await c.get("/api/status")).json()["sandboxes"]
        if all((status["pool"].get(k) or {}).get("ready", 0) >= v for k, v in pool.items()):
            return
        await asyncio.sleep(0.005)


def run(args: argparse.Namespace) -> int:
    pool = {"python": args.pool}
    for noisy in ("httpx", "httpx2", "mcp"):  # a line per request would bury the numbers
        logging.getLogger(noisy).setLevel(logging.WARNING)
    print(f"print(1) in python, {args.runs} calls of each kind, warm pool of {args.pool}")
    with daemon(pool) as url:
        with httpx.Client(base_url=url, timeout=10) as c:
            _pool_ready(c, pool)  # raises when the box cannot run sandboxes
        samples = asyncio.run(measure(url, args.runs, pool))
    for name, values in samples.items():
        print(_row(name, values))
    api = samples["(a) POST /api/run"]
    for name in list(samples)[1:]:
        extra = pct(samples[name], 0.5) - pct(api, 0.5)
        print(
            f"  {name[:3]} - (a): p50 {extra:+.1f} ms ({pct(samples[name], 0.5) / pct(api, 0.5):.2f}x)"
        )
    return 0
