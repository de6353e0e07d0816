"""Traces, usage and the GPU report on a live daemon with the tiny model."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.telemetry.nvml import Nvml
from tests.integration.daemon import Daemon, running_daemon

CHAT = [{"role": "user", "content": "Say hello"}]


@pytest.fixture(scope="module")
def daemon(tiny_model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    with running_daemon(
        tmp_path_factory.mktemp("ops-traces"),
        models={
            "tiny": {"source": str(tiny_model_path), "context_size": 256},
            "other": {"source": str(tiny_model_path), "context_size": 256},
        },
        config={"telemetry": {"trace_retention": 50}},
    ) as d:
        yield d


def test_every_response_carries_a_trace_id(daemon: Daemon) -> None:
    with daemon.http() as c:
        responses = [
            c.get("/api/health"),
            c.get("/api/status"),
            c.get("/no/such/route"),
            c.post("/v1/chat/completions", json={"model": "tiny"}),  # 400
            c.get("/api/models/none-such"),  # 404 from a handler
        ]
        with c.stream(
            "POST",
            "/v1/chat/completions",
            json={"model": "tiny", "messages": CHAT, "max_tokens": 3, "stream": True},
        ) as s:
            s.read()
            responses.append(s)
    ids = [r.headers.get("X-Trace-Id") for r in responses]
    assert all(i and i.startswith("trc_") for i in ids), ids
    assert len(set(ids)) == len(ids)


def test_a_chat_request_is_one_trace_with_queue_wake_prefill_and_decode(daemon: Daemon) -> None:
    with daemon.http() as c:
        c.post("/api/models/other/unload")
        r = c.post(
            "/v1/chat/completions", json={"model": "other", "messages": CHAT, "max_tokens": 5}
        )
        assert r.status_code == 200
        t = c.get(f"/api/traces/{r.headers['X-Trace-Id']}").json()
    assert (t["kind"], t["name"], t["model"], t["status"]) == (
        "chat",
        "POST /v1/chat/completions",
        "other",
        "ok",
    )
    assert t["attrs"]["http_status"] == 200
    spans = {s["name"]: s for s in t["spans"]}
    assert set(spans) == {"queue", "model.wake", "prefill", "decode"}
    assert spans["model.wake"]["parent"] == spans["queue"]["id"], (
        "the wake-up happened while queued"
    )
    assert spans["prefill"]["attrs"]["tokens"] == r.json()["usage"]["prompt_tokens"]
    assert spans["decode"]["attrs"]["tokens"] == r.json()["usage"]["completion_tokens"]
    assert spans["decode"]["start_ms"] >= spans["prefill"]["start_ms"]
    for s in t["spans"]:
        assert s["start_ms"] >= 0 and s["start_ms"] + s["duration_ms"] <= t["duration_ms"] + 1.0


def test_a_streamed_request_is_traced_to_its_end(daemon: Daemon) -> None:
    with daemon.http() as c:
        with c.stream(
            "POST",
            "/v1/completions",
            json={"model": "tiny", "prompt": "Once", "max_tokens": 4, "stream": True},
        ) as s:
            body = s.read().decode()
            trace_id = s.headers["X-Trace-Id"]
        assert body.rstrip().endswith("data: [DONE]")
        t = c.get(f"/api/traces/{trace_id}").json()
    assert {s["name"] for s in t["spans"]} >= {"queue", "prefill", "decode"}
    assert t["kind"] == "completion"


def test_listing_filters_and_quiet_reads_are_not_stored(daemon: Daemon) -> None:
    with daemon.http() as c:
        c.post("/v1/completions", json={"model": "tiny", "prompt": "a", "max_tokens": 2})
        quiet = c.get("/api/status").headers["X-Trace-Id"]
        listed = c.get("/api/traces", params={"model": "tiny", "limit": 5}).json()
        assert listed and all(t["model"] == "tiny" for t in listed)
        assert listed == sorted(listed, key=lambda t: t["started"], reverse=True)
        assert all(t["spans"] == [] for t in listed), "listings leave the spans out"
        recent = c.get("/api/traces", params={"since": "1h", "kind": "completion"}).json()
        assert recent and all(t["kind"] == "completion" for t in recent)
        missing = c.get(f"/api/traces/{quiet}")
        assert missing.status_code == 404 and "retention" in missing.json()["error"]["message"]
        assert c.get("/api/traces", params={"limit": 0}).status_code == 400


def test_retention_keeps_the_newest_traces(daemon: Daemon) -> None:
    """trace_retention is 50 here; pruning runs every tenth of it (at least 10) stored traces."""
    with daemon.http() as c:
        made = [
            c.post("/api/models/tiny/pin", params={"pinned": "false"}).headers["X-Trace-Id"]
            for _ in range(70)
        ]
        kept = [t["id"] for t in c.get("/api/traces", params={"limit": 1000}).json()]
        oldest = c.get(f"/api/traces/{made[0]}")
    assert 50 <= len(kept) < 60
    assert made[-1] in kept and made[0] not in kept
    assert oldest.status_code == 404


def test_usage_by_model_matches_the_tokens_served(daemon: Daemon) -> None:
    with daemon.http() as c:
        before = {r["key"]: r for r in c.get("/api/usage", params={"by": "model"}).json()["rows"]}
        served = {"in": 0, "out": 0}
        for _ in range(2):
            u = c.post(
                "/v1/chat/completions", json={"model": "tiny", "messages": CHAT, "max_tokens": 4}
            ).json()["usage"]
            served["in"] += u["prompt_tokens"]
            served["out"] += u["completion_tokens"]
        report = c.get("/api/usage", params={"by": "model"}).json()
        by_session = c.get("/api/usage", params={"by": "session", "since": "1h"}).json()
        bad = c.get("/api/usage", params={"by": "colour"})
        bad_since = c.get("/api/usage", params={"since": "last tuesday"})
    after = {r["key"]: r for r in report["rows"]}
    was = before.get("tiny", {"tokens_in": 0, "tokens_out": 0, "requests": 0, "busy_seconds": 0.0})
    assert after["tiny"]["tokens_in"] - was["tokens_in"] == served["in"]
    assert after["tiny"]["tokens_out"] - was["tokens_out"] == served["out"]
    assert after["tiny"]["requests"] - was["requests"] == 2
    assert after["tiny"]["busy_seconds"] > was["busy_seconds"]
    assert after["tiny"]["gpu_seconds"] > 0, "resident time of a loaded model is counted"
    assert report["energy_measured"] is (Nvml.open() is not None)
    assert report["total"]["tokens_in"] >= after["tiny"]["tokens_in"]
    assert any(r["key"] is None for r in by_session["rows"]), "requests outside a session"
    assert bad.status_code == 400 and "model, agent or session" in bad.json()["error"]["message"]
    assert bad_since.status_code == 400 and "24h" in bad_since.json()["error"]["message"]


def test_gpu_report_without_a_driver_says_so_and_shows_the_host(daemon: Daemon) -> None:
    if Nvml.open() is not None:
        pytest.skip("this machine has an NVIDIA driver (see tests/gpu)")
    with daemon.http() as c:
        c.post("/api/models/tiny/load")
        g = c.get("/api/gpu").json()
    assert g["nvml"] is False and g["gpus"] == []
    assert "no NVIDIA driver" in g["message"] or "not installed" in g["message"]
    assert g["host"]["memory_total_bytes"] > 0 and g["host"]["cpu_count"] >= 1
    worker = next(w for w in g["workers"] if w["model"] == "tiny")
    assert worker["pid"] > 0 and worker["rss_bytes"] > 0 and worker["gpu_memory_bytes"] is None
