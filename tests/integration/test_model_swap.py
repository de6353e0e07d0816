"""Model swaps under churn with real workers (real llama.cpp, real jail where the host has one).

SmolLM2 (chat, ~188 MiB estimated at n_ctx 2048) and MiniLM (embedding, ~79 MiB at 256) under a
250 MiB budget: one of them fits beside a spare worker (~48 MiB), both do not, so every request
that alternates between them is a swap.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

from tests.integration.daemon import running_daemon
from tests.integration.procs import descendants, describe, survivors

BUDGET_MB = 250


def swap_models(smollm2_path: Path, minilm_gguf_path: Path) -> dict[str, dict[str, Any]]:
    return {
        "chat": {"source": str(smollm2_path), "context_size": 2048, "idle_ttl_s": 600},
        "emb": {
            "source": str(minilm_gguf_path),
            "kind": "embedding",
            "context_size": 256,
            "idle_ttl_s": 600,
        },
    }


def workers_of(pid: int) -> list[str]:
    """The daemon's model worker processes now (the python ones, not the bwrap around them)."""
    return [
        d
        for d in (describe(p) for p, _ in descendants(pid))
        if "appliance.models.worker" in d and "bwrap" not in d.split(":", 1)[1][:40]
    ]


def test_back_to_back_alternating_swaps_all_succeed_and_leave_no_worker(
    smollm2_path: Path, minilm_gguf_path: Path, tmp_path: Path
) -> None:
    models = swap_models(smollm2_path, minilm_gguf_path)
    config = {"models": {"memory_budget_mb": BUDGET_MB, "thrash_loads": 4}}
    with running_daemon(tmp_path, models=models, config=config) as d, d.http() as c:
        pid = d.proc.pid
        seen_workers: list[int] = []
        for i in range(20):
            if i % 2 == 0:
                r = c.post(
                    "/v1/completions", json={"model": "chat", "prompt": "Hi", "max_tokens": 1}
                )
            else:
                r = c.post("/v1/embeddings", json={"model": "emb", "input": "hello"})
            assert r.status_code == 200, (i, r.text)
            seen_workers.append(len(workers_of(pid)))
            st = c.get("/api/status").json()["scheduler"]
            assert st["memory_used_bytes"] + st["spare_memory_bytes"] <= BUDGET_MB * 2**20, st
        got = {m["id"]: m for m in c.get("/api/models").json() if m["id"] in models}
        assert got["chat"]["load_count"] == 10 and got["emb"]["load_count"] == 10, got
        assert got["chat"]["counters"]["swaps"] == 9 and got["emb"]["counters"]["swaps"] == 9
        assert got["chat"]["counters"]["thrash"] >= 1, (
            "a model swapped 9 times in seconds is reported"
        )
        assert got["chat"]["swap_cost_ms"]["warm"] is not None
        metrics = c.get("/metrics").text
        assert 'appliance_model_thrash_total{model="chat"}' in metrics
        # one model and at most two spares (spare_workers + one recycled) at any time
        assert max(seen_workers) <= 3, seen_workers
        d.stop()
        assert not survivors(
            [str(d.state_dir)], descendants(pid) if d.proc.poll() is None else ()
        ), "a worker outlived the daemon"


def test_two_models_that_fit_load_in_parallel_and_a_slow_load_delays_no_one(
    smollm2_path: Path, minilm_gguf_path: Path, tiny_model_path: Path, tmp_path: Path
) -> None:
    models = swap_models(smollm2_path, minilm_gguf_path) | {
        "tiny": {"source": str(tiny_model_path), "context_size": 256, "idle_ttl_s": 600}
    }
    with (
        running_daemon(tmp_path, models=models, config={"models": {"spare_workers": 2}}) as d,
        d.http() as c,
    ):
        # two spares ready, then both models at once: both are in `loading` together
        deadline = time.monotonic() + 60
        while c.get("/api/status").json()["scheduler"]["spare_workers"] < 2:
            assert time.monotonic() < deadline, "two spares did not come up"
            time.sleep(0.05)
        results: dict[str, int] = {}

        def ask(mid: str) -> None:
            with d.http() as c2:
                if mid == "emb":
                    r = c2.post("/v1/embeddings", json={"model": mid, "input": "x"})
                else:
                    r = c2.post(
                        "/v1/completions", json={"model": mid, "prompt": "x", "max_tokens": 1}
                    )
                results[mid] = r.status_code

        threads = [threading.Thread(target=ask, args=(m,)) for m in ("chat", "emb")]
        for t in threads:
            t.start()
        both_loading = False
        deadline = time.monotonic() + 30
        while any(t.is_alive() for t in threads) and time.monotonic() < deadline:
            states = {m["id"]: m["state"] for m in c.get("/api/models").json()}
            if states.get("chat") == "loading" and states.get("emb") == "loading":
                both_loading = True
            time.sleep(0.005)
        for t in threads:
            t.join(30)
        assert results == {"chat": 200, "emb": 200}
        assert both_loading, "the two loads overlapped"

        # the tiny model is loaded; while SmolLM2 loads again (a slow load), tiny answers at once
        assert (
            c.post(
                "/v1/completions", json={"model": "tiny", "prompt": "x", "max_tokens": 1}
            ).status_code
            == 200
        )
        c.post("/api/models/chat/unload")
        d.wait_state("chat", {"unloaded"})
        slow = threading.Thread(target=ask, args=("chat",))
        slow.start()
        deadline = time.monotonic() + 10
        while c.get("/api/models/chat").json()["state"] != "loading":
            assert time.monotonic() < deadline and slow.is_alive(), "never saw the load"
            time.sleep(0.002)
        t0 = time.perf_counter()
        r = c.post("/v1/completions", json={"model": "tiny", "prompt": "x", "max_tokens": 1})
        tiny_ms = (time.perf_counter() - t0) * 1000
        chat_state = c.get("/api/models/chat").json()["state"]
        slow.join(30)
        assert r.status_code == 200
        assert chat_state == "loading" or tiny_ms < 150, (chat_state, tiny_ms)
