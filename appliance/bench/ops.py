"""`appliance bench ops`: what the operations layer costs each request.

The same app is driven in-process (httpx over ASGI, no sockets, so the numbers are the app's
own) with and without the per-request wrappers: the request telemetry (trace, X-Trace-Id, route
metrics, log line), the browser boundary (Host, Origin, content type, body counting) and the
bearer-token check (a store lookup on the store's thread pool). Three cases: a route the token
check skips (/api/health), an open box (the check counts tokens), and a box with a token (the
check verifies it). A second table calls the browser boundary alone, directly, around an ASGI app
that only reads the body and answers (through a client its few microseconds drown in the
client's own cost): a plain read, a read from a configured CORS origin (headers added to the
answer), JSON POSTs (content type checked, body counted as it streams), the raw file upload, and
a refusal (a foreign Origin: the boundary answers and the app never runs). It also times a /metrics scrape. It prints microseconds per request (median of
several rounds); it asserts nothing.
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
    p = sub.add_parser(
        "ops", help="per-request cost of tracing, metrics, the browser boundary and the token check"
    )
    p.add_argument("--requests", type=int, default=500, help="requests per round")
    p.add_argument("--rounds", type=int, default=5)
    p.set_defaults(func=run)


Request = tuple[str, str, dict[str, str], bytes | None]
"""(method, path, headers, body)"""


async def _per_request_us(
    app: Any, request: Request | str, n: int, rounds: int, headers: dict[str, str]
) -> float:
    method, path, extra, body = (
        request if isinstance(request, tuple) else ("GET", request, {}, None)
    )
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(
        transport=transport, base_url="http://127.0.0.1:8420", headers=headers
    ) as c:
        for _ in range(50):  # warm up
            await c.request(method, path, headers=extra, content=body)
        results = []
        for _ in range(rounds):
            t0 = time.perf_counter()
            for _ in range(n):
                r = await c.request(method, path, headers=extra, content=body)
            results.append((time.perf_counter() - t0) / n * 1e6)
            assert r.status_code < 500, r.text
    return statistics.median(results)


ORIGIN = "https://app.example"
JSON = {"Content-Type": "application/json"}
BOUNDARY_CASES: list[tuple[str, Request]] = [
    ("GET /api/health", ("GET", "/api/health", {}, None)),
    ("GET, configured CORS origin", ("GET", "/v1/models", {"Origin": ORIGIN}, None)),
    ("POST 1 KiB JSON", ("POST", "/api/agents", JSON, b'{"pad": "' + b"x" * 1024 + b'"}')),
    ("POST 1 MiB JSON, 16 chunks", ("POST", "/api/agents", JSON, b"x" * (1 << 20))),
    ("PUT file upload", ("PUT", "/api/sandboxes/sbx_1/files/a/b.txt", {}, b"x" * 1024)),
    ("refused: foreign Origin", ("GET", "/api/sessions", {"Origin": "http://evil.example"}, None)),
]


def _scope(request: Request) -> dict[str, Any]:
    method, path, extra, body = request
    headers = [(b"host", b"127.0.0.1:8420"), (b"user-agent", b"bench"), (b"accept", b"*/*")]
    headers += [(k.lower().encode(), v.encode()) for k, v in extra.items()]
    if body is not None:
        headers.append((b"content-length", str(len(body)).encode()))
    return {
        "type": "http",
        "method": method,
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "headers": headers,
        "http_version": "1.1",
    }


async def _layer_us(app: Any, request: Request, n: int, rounds: int) -> float:
    """Microseconds per request through `app` called directly (no client, no sockets)."""
    scope, body = _scope(request), request[3] or b""
    size = max(1, len(body) // 16)
    chunks = [body[i : i + size] for i in range(0, len(body), size)] or [b""]

    async def send(message: Any) -> None:
        return None

    def receiver() -> Any:
        messages = iter(
            [
                {"type": "http.request", "body": c, "more_body": i < len(chunks) - 1}
                for i, c in enumerate(chunks)
            ]
        )

        async def receive() -> Any:
            return next(messages, {"type": "http.disconnect"})

        return receive

    results = []
    for r in range(rounds + 1):
        t0 = time.perf_counter()
        for _ in range(n):
            await app(scope, receiver(), send)
        if r:  # the first round warms up
            results.append((time.perf_counter() - t0) / n * 1e6)
    return statistics.median(results)


async def _inner(scope: Any, receive: Any, send: Any) -> None:
    """What the boundary wraps, at its cheapest: read the body, answer 200."""
    more = scope["method"] != "GET"
    while more:
        more = (await receive()).get("more_body", False)
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b""})


async def _bench(n: int, rounds: int) -> None:
    import msgspec

    from appliance.api.app import create_app
    from appliance.api.boundary import BoundaryPolicy, BrowserBoundary
    from appliance.app import Appliance
    from appliance.config import load_config

    with tempfile.TemporaryDirectory() as state:
        config = load_config(None, state_dir=state)
        config = msgspec.structs.replace(
            config, server=msgspec.structs.replace(config.server, cors_origins=[ORIGIN])
        )
        appliance = await asyncio.to_thread(Appliance.from_config, config)
        await appliance.operations.start()
        full = create_app(appliance, manage_lifecycle=False)
        bare = create_app(appliance, manage_lifecycle=False)
        # unwrap telemetry, boundary and token check
        bare.asgi_handler = bare.asgi_handler.app.app.app  # type: ignore[attr-defined]
        try:
            rows = []
            for path in ("/api/health", "/v1/models"):
                base = await _per_request_us(bare, path, n, rounds, {})
                open_box = await _per_request_us(full, path, n, rounds, {})
                rows.append((path, "open box", base, open_box))
            policy = BoundaryPolicy.from_config(config, full.routes)
            boundary_rows = []
            for name, request in BOUNDARY_CASES:
                base = await _layer_us(_inner, request, n * 10, rounds)
                alone = await _layer_us(BrowserBoundary(_inner, policy), request, n * 10, rounds)
                boundary_rows.append((name, base, alone))
            token = (await appliance.store.run(appliance.store.tokens.create, "bench")).plain
            auth = {"Authorization": f"Bearer {token}"}
            base = await _per_request_us(bare, "/v1/models", n, rounds, auth)
            guarded = await _per_request_us(full, "/v1/models", n, rounds, auth)
            rows.append(("/v1/models", "with a token", base, guarded))
            scrape = await _per_request_us(full, "/metrics", max(20, n // 10), rounds, auth)
        finally:
            await appliance.operations.stop()
            await appliance.store.aclose()
    print("all wrappers (telemetry, browser boundary, token check):")
    print(f"{'route':14} {'case':13} {'bare us':>9} {'wrapped us':>11} {'overhead us':>12}")
    for path, case, b, w in rows:
        print(f"{path:14} {case:13} {b:9.1f} {w:11.1f} {w - b:12.1f}")
    print("\nbrowser boundary alone, called directly around a bare ASGI app:")
    print(f"{'request':28} {'bare us':>9} {'boundary us':>12} {'overhead us':>12}")
    for name, b, w in boundary_rows:
        print(f"{name:28} {b:9.2f} {w:12.2f} {w - b:12.2f}")
    print(
        f"\n/metrics scrape (models, sessions, host and GPU gauges, render): {scrape / 1000:.2f} ms"
    )


def run(args: argparse.Namespace) -> int:
    logging.getLogger("httpx").setLevel(
        logging.WARNING
    )  # one line per request would drown the table
    asyncio.run(_bench(args.requests, args.rounds))
    return 0
