"""/metrics after real requests on a live daemon with the tiny model: it parses with
prometheus-client's parser and each counter moves by exactly the work done."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import require
from tests.integration.daemon import Daemon, running_daemon
from tests.integration.ops_client import delta, sample, scrape

CHAT = [{"role": "user", "content": "Say hello"}]


@pytest.fixture(scope="module")
def daemon(tiny_model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    with running_daemon(
        tmp_path_factory.mktemp("ops-metrics"),
        models={
            "tiny": {"source": str(tiny_model_path), "context_size": 512},
            "fresh": {"source": str(tiny_model_path), "context_size": 256},
        },
    ) as d:
        yield d


def test_model_requests_move_request_generation_and_token_counters(daemon: Daemon) -> None:
    with daemon.http() as c:
        before = scrape(c)
        usage = {"prompt": 0, "completion": 0}
        several = 0  # generations with a decode phase (more than one token) give a tokens/s
        for i in range(3):
            r = c.post(
                "/v1/chat/completions",
                json={"model": "tiny", "messages": CHAT, "max_tokens": 6 + i},
            )
            assert r.status_code == 200
            usage["prompt"] += r.json()["usage"]["prompt_tokens"]
            usage["completion"] += r.json()["usage"]["completion_tokens"]
            several += r.json()["usage"]["completion_tokens"] > 1
        with c.stream(
            "POST",
            "/v1/completions",
            json={
                "model": "tiny",
                "prompt": "Once upon",
                "max_tokens": 5,
                "stream": True,
                "stream_options": {"include_usage": True},
            },
        ) as s:
            lines = [line for line in s.iter_lines() if line.startswith("data: {")]
        last = json.loads(lines[-1][6:])
        usage["prompt"] += last["usage"]["prompt_tokens"]
        usage["completion"] += last["usage"]["completion_tokens"]
        several += last["usage"]["completion_tokens"] > 1
        after = scrape(c)

    chat = {"route": "/v1/chat/completions", "method": "POST", "status": "200"}
    assert delta(before, after, "appliance_http_requests_total", **chat) == 3
    assert (
        delta(
            before,
            after,
            "appliance_http_requests_total",
            route="/v1/completions",
            method="POST",
            status="200",
        )
        == 1
    )
    assert (
        delta(before, after, "appliance_generations_total", model="tiny", kind="chat", outcome="ok")
        == 3
    )
    assert (
        delta(
            before,
            after,
            "appliance_generations_total",
            model="tiny",
            kind="completion",
            outcome="ok",
        )
        == 1
    )
    assert delta(before, after, "appliance_prompt_tokens_total", model="tiny") == usage["prompt"]
    assert (
        delta(before, after, "appliance_completion_tokens_total", model="tiny")
        == usage["completion"]
    )
    for hist in ("appliance_time_to_first_token_seconds", "appliance_queue_wait_seconds"):
        assert delta(before, after, hist + "_count", model="tiny") == 4
    assert delta(before, after, "appliance_tokens_per_second_count", model="tiny") == several
    assert (
        delta(
            before,
            after,
            "appliance_http_request_duration_seconds_count",
            route="/v1/chat/completions",
            method="POST",
        )
        == 3
    )


def test_load_and_unload_move_lifecycle_counters_and_gauges(daemon: Daemon) -> None:
    with daemon.http() as c:
        before = scrape(c)
        assert (
            c.post(
                "/v1/completions", json={"model": "fresh", "prompt": "a", "max_tokens": 2}
            ).status_code
            == 200
        )
        loaded = scrape(c)
        assert c.post("/api/models/fresh/unload").json()["state"] == "unloaded"
        after = scrape(c)
    assert delta(before, loaded, "appliance_model_loads_total", model="fresh") == 1
    assert delta(before, loaded, "appliance_model_wakeup_seconds_count", model="fresh") == 1
    assert sample(loaded, "appliance_model_memory_bytes", model="fresh") > 0
    assert sample(loaded, "appliance_model_queue_depth", model="fresh") == 0
    assert (
        sample(loaded, "appliance_models_resident")
        == sample(before, "appliance_models_resident") + 1
    )
    assert (
        delta(loaded, after, "appliance_model_unloads_total", model="fresh", reason="requested")
        == 1
    )
    assert sample(after, "appliance_model_memory_bytes", model="fresh") == 0, "no stale series"
    assert sample(after, "appliance_models_resident") == sample(before, "appliance_models_resident")
    assert sample(after, "appliance_memory_budget_bytes") > 0


def test_routes_are_labelled_by_template_never_by_raw_path(daemon: Daemon) -> None:
    with daemon.http() as c:
        before = scrape(c)
        assert c.get("/api/models/tiny").status_code == 200
        assert c.get("/api/models/no-such-model").status_code == 404
        assert c.get("/no/such/route/42").status_code == 404
        after = scrape(c)
    tmpl = "/api/models/{model_id}"
    assert (
        delta(
            before, after, "appliance_http_requests_total", route=tmpl, method="GET", status="200"
        )
        == 1
    )
    assert (
        delta(
            before, after, "appliance_http_requests_total", route=tmpl, method="GET", status="404"
        )
        == 1
    )
    assert (
        delta(
            before,
            after,
            "appliance_http_requests_total",
            route="<unmatched>",
            method="GET",
            status="404",
        )
        == 1
    )
    assert not any(
        "no-such-model" in str(labels) or "/no/such" in str(labels) for _, labels in after
    )


def test_sandbox_runs_are_counted_by_language_and_status(daemon: Daemon) -> None:
    with daemon.http() as c:
        available = c.get("/api/status").json().get("sandboxes", {}).get("available")
        require(available, "sandboxes are not available on this host (see appliance doctor)")
        before = scrape(c)
        ok = c.post("/api/run", json={"language": "python", "code": "print(6 * 7)"})
        bad = c.post("/api/run", json={"language": "python", "code": "raise SystemExit(3)"})
        assert ok.json()["status"] == "ok" and bad.json()["status"] == "error", (ok.text, bad.text)
        after = scrape(c)
    assert delta(before, after, "appliance_sandbox_runs_total", language="python", status="ok") == 1
    assert (
        delta(before, after, "appliance_sandbox_runs_total", language="python", status="error") == 1
    )
    assert (
        delta(before, after, "appliance_sandbox_run_duration_seconds_count", language="python") == 2
    )


def test_state_gauges_for_sessions_host_and_gpus(daemon: Daemon) -> None:
    with daemon.http() as c:
        s = scrape(c)
    assert sample(s, "appliance_sessions", status="active") >= 0
    assert ("appliance_sessions", frozenset({("status", "parked")})) in s
    assert ("appliance_kv_parked_bytes", frozenset()) in s
    assert sample(s, "appliance_host_memory_total_bytes") > 0
    assert ("appliance_gpus", frozenset()) in s


def test_metrics_need_the_token_like_everything_else(tmp_path: Path) -> None:
    import subprocess
    import sys

    state = tmp_path / "state"
    made = subprocess.run(
        [
            sys.executable,
            "-m",
            "appliance",
            "token",
            "create",
            "prometheus",
            "--state-dir",
            str(state),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    token = next(w for w in made.stdout.split() if w.startswith("apl_"))
    with running_daemon(tmp_path) as d:
        assert httpx.get(d.url + "/metrics").status_code == 401
        r = httpx.get(d.url + "/metrics", headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 200 and "appliance_http_requests_total" in r.text
