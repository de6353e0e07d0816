"""GET /api/events on a live daemon: the events of real operations arrive in order, a reconnect
with Last-Event-ID misses nothing, filters work, and a stop ends open streams promptly."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import require
from tests.integration.daemon import Daemon, running_daemon, start_daemon
from tests.integration.ops_client import event_stream


@pytest.fixture(scope="module")
def daemon(tiny_model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    from tests.fixtures.tinymodel import write_malformed_gguf

    root = tmp_path_factory.mktemp("ops-events")
    bad = write_malformed_gguf(root / "bad.gguf")
    with running_daemon(
        root,
        models={
            "tiny": {"source": str(tiny_model_path), "context_size": 256},
            "bad": {"source": str(bad)},
        },
    ) as d:
        yield d


def states(events: list[dict[str, Any]], model: str) -> list[str]:
    return [e["state"] for e in events if e["type"] == "model.state" and e.get("model") == model]


def test_load_and_unload_arrive_in_order(daemon: Daemon) -> None:
    with event_stream(daemon.url) as stream, daemon.http() as c:
        assert c.post("/api/models/tiny/load").json()["state"] == "ready"
        assert c.post("/api/models/tiny/unload").json()["state"] == "unloaded"
        got = stream.until(lambda e: e["type"] == "model.state" and e["state"] == "unloaded")
    assert states(got, "tiny") == ["loading", "ready", "unloading", "unloaded"]
    ready = next(e for e in got if e.get("state") == "ready")
    assert ready["load_ms"] > 0 and ready["memory_bytes"] > 0
    assert next(e for e in got if e.get("state") == "unloaded")["reason"] == "requested"
    seqs = [e["seq"] for e in got]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)


def test_sandbox_events_in_order(daemon: Daemon) -> None:
    with daemon.http() as c:
        available = c.get("/api/status").json().get("sandboxes", {}).get("available")
        require(available, "sandboxes are not available on this host (see appliance doctor)")
        with event_stream(daemon.url, params={"types": "sandbox."}) as stream:
            sb = c.post("/api/sandboxes", json={"language": "python"}).json()
            assert (
                c.post(f"/api/sandboxes/{sb['id']}/exec", json={"code": "x = 1"}).status_code == 200
            )
            assert c.delete(f"/api/sandboxes/{sb['id']}").status_code in (200, 204)
            assert (
                c.post("/api/run", json={"language": "python", "code": "print(1)"}).json()["status"]
                == "ok"
            )
            runs = 0

            def second_run(e: dict[str, Any]) -> bool:
                nonlocal runs
                runs += e["type"] == "sandbox.run"
                return runs == 2

            got = stream.until(second_run)
    kinds = [e["type"] for e in got]
    assert kinds == ["sandbox.created", "sandbox.run", "sandbox.destroyed", "sandbox.run"], got
    assert got[0]["sandbox"] == sb["id"] == got[2]["sandbox"]
    assert got[1]["language"] == "python" and got[1]["status"] == "ok"
    assert all(k.startswith("sandbox.") for k in kinds), "the types filter leaves model events out"


def test_a_reconnect_with_last_event_id_replays_what_it_missed(daemon: Daemon) -> None:
    with event_stream(daemon.url) as first, daemon.http() as c:
        c.post("/api/models/tiny/load")
        seen = first.until(lambda e: e.get("state") == "ready")
    last = seen[0]["seq"] - 1
    with daemon.http() as c:
        c.post("/api/models/tiny/unload")
    with event_stream(daemon.url, headers={"Last-Event-ID": str(last)}) as again:
        replay = again.until(lambda e: e.get("state") == "unloaded")
    assert states(replay, "tiny") == ["loading", "ready", "unloading", "unloaded"]
    assert replay[0]["seq"] == last + 1


def test_a_failed_load_and_the_5xx_it_caused_are_events(daemon: Daemon) -> None:
    with event_stream(daemon.url, params={"types": "model.,error"}) as stream, daemon.http() as c:
        r = c.post("/v1/completions", json={"model": "bad", "prompt": "x", "max_tokens": 1})
        assert r.status_code >= 500
        got = stream.until(lambda e: e["type"] == "error")
    assert states(got, "bad") == ["loading", "failed"]
    assert next(e for e in got if e.get("state") == "failed")["error"]
    err = got[-1]
    assert (err["route"], err["method"], err["status"]) == (
        "/v1/completions",
        "POST",
        r.status_code,
    )
    assert err["trace_id"] == r.headers["X-Trace-Id"]
    assert {e["type"] for e in got} <= {"model.state", "model.fetch", "error"}


def test_stopping_the_daemon_ends_open_streams_at_once(tmp_path: Path) -> None:
    d = start_daemon(tmp_path, config={"server": {"shutdown_grace_s": 30}})
    try:
        with event_stream(d.url) as stream:
            d.proc.terminate()
            got = stream.until(lambda e: e["type"] == "daemon.stopping", timeout=10)
            assert stream.ended.wait(10), "the stream must end, not hold the shutdown"
            # with a 30 s grace period, an open stream holding the shutdown would time this out
            assert d.proc.wait(20) == 0
        assert got[-1]["type"] == "daemon.stopping"
        with pytest.raises(httpx.ConnectError):
            httpx.get(d.url + "/api/health", timeout=2)
    finally:
        d.stop()
