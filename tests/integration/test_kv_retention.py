"""Context retention with SmolLM2: a session's KV state is parked and restored instead of re-prefilled.

The daemon serves the model with one slot, so a second session always displaces the first. Each
check compares a turn answered from parked state with the same turn answered after a full prefill
(a fork of the session at the same point, with the model freshly loaded so nothing is cached): at
temperature 0 the words must be the same. What a turn did with parked state is visible in its done
event's timings.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.daemon import Daemon, running_daemon, start_daemon
from tests.integration.sessions_client import TurnResult, new_session, send_turn

MODEL = "smollm2-135m-instruct"
HISTORY = (
    "Please read these notes from the harbour master's log and keep them in mind.\n"
    + "\n".join(
        f"Day {i}: the ship Aurora-{i} arrived from port {i * 7 % 13} carrying {i * 11} crates of "
        f"tea; the weather was {'calm' if i % 3 else 'stormy'} and the pilot was number {i % 5}."
        for i in range(1, 21)
    )
)
QUESTION = "Which ship arrived on day 3, and what did it carry?"


@pytest.fixture(scope="module")
def daemon(smollm2_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    root = tmp_path_factory.mktemp("kv-retention")
    copy = root / "copy-of-smollm2.gguf"
    shutil.copyfile(smollm2_path, copy)
    with running_daemon(
        root,
        models={
            MODEL: {"source": str(smollm2_path), "context_size": 2048, "parallel": 1},
            "smollm2-copy": {"source": str(copy), "context_size": 2048, "parallel": 1},
        },
        # displaced sessions go to disk here (the RAM tier has tests of its own)
        config={"agents": {"park_idle_s": 0, "kv_ram_budget_mb": 0}},
    ) as d:
        with d.http() as c:
            add_keeper(c)
        yield d


def add_keeper(http: httpx.Client) -> None:
    r = http.post(
        "/api/agents",
        json={
            "name": "keeper",
            "model": MODEL,
            "persona": "You answer briefly.",
            "params": {"temperature": 0, "seed": 7, "max_tokens": 24},
        },
    )
    assert r.status_code == 201, r.text


@pytest.fixture
def http(daemon: Daemon) -> Iterator[httpx.Client]:
    with daemon.http(timeout=300) as c:
        yield c


def unload(daemon: Daemon, http: httpx.Client, model: str = MODEL) -> None:
    http.post(f"/api/models/{model}/unload")
    daemon.wait_state(model, {"unloaded"})


def long_session(http: httpx.Client) -> dict[str, Any]:
    s = new_session(http, agent="keeper")
    first = send_turn(http, s["id"], HISTORY)
    assert first.names[-1] == "done", first.events[-1:]
    assert first.done["timings"]["prompt_tokens"] > 600
    return s


def full_prefill_answer(
    daemon: Daemon, http: httpx.Client, session_id: str, before_seq: int, question: str
) -> TurnResult:
    """The same turn on a fork with nothing cached: the model is reloaded, the fork has no KV."""
    messages = http.get(f"/api/sessions/{session_id}").json()["messages"]
    at = next(m for m in messages if m["seq"] == before_seq)
    fork = http.post(f"/api/sessions/{session_id}/fork", json={"at_message": at["id"]}).json()
    unload(daemon, http)
    t = send_turn(http, fork["id"], question)
    assert t.done["timings"]["kv_restored"] is False
    assert t.done["timings"]["cached_tokens"] <= 2, t.done["timings"]
    return t


def parked(http: httpx.Client, session_id: str) -> list[dict[str, Any]]:
    return list(http.get(f"/api/sessions/{session_id}").json()["parked"])


def test_after_an_unload_the_next_turn_restores_the_parked_state_and_answers_the_same(
    daemon: Daemon, http: httpx.Client
) -> None:
    s = long_session(http)
    assert parked(http, s["id"]) == []
    unload(daemon, http)
    (entry,) = parked(http, s["id"])
    assert entry["n_tokens"] > 600 and Path(entry["path"]).is_file()
    assert http.get(f"/api/sessions/{s['id']}").json()["status"] == "parked"

    resumed = send_turn(http, s["id"], QUESTION)
    t = resumed.done["timings"]
    assert t["kv_restored"] is True, t
    assert t["kv_restored_tokens"] == entry["n_tokens"] and t["kv_restore_bytes"] > 0
    assert t["cached_tokens"] >= entry["n_tokens"] - 30, "only the new question was evaluated"
    assert t["load_ms"] is not None, "the model really was loaded again for this turn"

    trace = wait_for_trace(http, s["id"], "kv.restore")
    assert trace["kind"] == "turn" and trace["agent"] == "keeper"

    reference = full_prefill_answer(daemon, http, s["id"], 2, QUESTION)
    assert reference.text == resumed.text


def wait_for_trace(http: httpx.Client, session_id: str, span_name: str) -> dict[str, Any]:
    """The session's trace holding a span of that name (traces are written shortly after a turn)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for t in http.get("/api/traces", params={"session_id": session_id}).json():
            full = http.get(f"/api/traces/{t['id']}").json()
            if any(sp["name"] == span_name for sp in full["spans"]):
                return dict(full)
        time.sleep(0.2)
    raise AssertionError(f"no trace of session {session_id} has a {span_name} span")


def test_a_session_displaced_from_its_slot_is_restored_without_an_unload(
    daemon: Daemon, http: httpx.Client
) -> None:
    a = long_session(http)
    loads = daemon.model(MODEL)["load_count"]
    b = new_session(http, agent="keeper")
    send_turn(http, b["id"], "Hello, who are you?")  # one slot: a's state is parked to make room
    (entry,) = parked(http, a["id"])
    assert entry["n_tokens"] > 600
    back = send_turn(http, a["id"], QUESTION)
    assert back.done["timings"]["kv_restored"] is True
    assert daemon.model(MODEL)["load_count"] == loads, "no unload was involved"
    reference = full_prefill_answer(daemon, http, a["id"], 2, QUESTION)
    assert reference.text == back.text


def test_a_plain_request_that_takes_the_slot_parks_the_session_first(
    daemon: Daemon, http: httpx.Client
) -> None:
    a = long_session(http)
    r = http.post(
        "/v1/chat/completions",
        json={"model": MODEL, "max_tokens": 4, "messages": [{"role": "user", "content": "Hi."}]},
    )
    assert r.status_code == 200, r.text
    deadline = time.monotonic() + 30  # the daemon indexes the parked file after answering
    while not parked(http, a["id"]) and time.monotonic() < deadline:
        time.sleep(0.05)
    (entry,) = parked(http, a["id"])
    assert entry["n_tokens"] > 600
    back = send_turn(http, a["id"], QUESTION)
    assert back.done["timings"]["kv_restored"] is True, back.done["timings"]


def test_a_damaged_parked_file_falls_back_to_a_full_prefill(
    daemon: Daemon, http: httpx.Client
) -> None:
    s = long_session(http)
    unload(daemon, http)
    (entry,) = parked(http, s["id"])
    path = Path(entry["path"])
    data = bytearray(path.read_bytes())
    for i in range(len(data) // 2, len(data) // 2 + 64):
        data[i] ^= 0x5A
    path.write_bytes(bytes(data))

    t = send_turn(http, s["id"], QUESTION)
    timings = t.done["timings"]
    assert timings["kv_restored"] is False and "checksum" in timings["kv_restore_error"]
    assert timings["cached_tokens"] <= 2
    assert parked(http, s["id"]) == [] and not path.exists(), "the damaged file is dropped"
    reference = full_prefill_answer(daemon, http, s["id"], 2, QUESTION)
    assert reference.text == t.text


def test_another_model_file_never_uses_the_parked_state(daemon: Daemon, http: httpx.Client) -> None:
    s = long_session(http)
    unload(daemon, http)
    assert len(parked(http, s["id"])) == 1
    http.patch("/api/agents/keeper", json={"model": "smollm2-copy"})
    try:
        t = send_turn(http, s["id"], QUESTION)
        assert (
            t.done["timings"]["kv_restored"] is False
            and "kv_restore_error" not in t.done["timings"]
        )
        assert t.done["timings"]["cached_tokens"] <= 2
        unload(daemon, http, "smollm2-copy")
        fingerprints = {e["model_fingerprint"] for e in parked(http, s["id"])}
        assert len(fingerprints) == 2, "one parked state per model file"
    finally:
        http.patch("/api/agents/keeper", json={"model": MODEL})


def test_sessions_and_their_parked_state_survive_a_restart(
    smollm2_path: Path, tmp_path: Path
) -> None:
    models = {MODEL: {"source": str(smollm2_path), "context_size": 2048, "parallel": 1}}
    d = start_daemon(tmp_path, models=models, config={"agents": {"park_idle_s": 0}})
    try:
        with d.http(timeout=300) as c:
            add_keeper(c)
            s = long_session(c)
            before = c.get(f"/api/sessions/{s['id']}").json()["messages"]
    finally:
        assert d.stop() == 0
    d = start_daemon(tmp_path, models=models, config={"agents": {"park_idle_s": 0}})
    try:
        with d.http(timeout=300) as c:
            detail = c.get(f"/api/sessions/{s['id']}").json()
            assert detail["messages"] == before
            assert detail["status"] == "parked" and len(detail["parked"]) == 1, "parked at shutdown"
            after = send_turn(c, s["id"], QUESTION)
            assert after.done["timings"]["kv_restored"] is True
            assert [a["name"] for a in c.get("/api/agents").json()["items"]].count("keeper") == 1
    finally:
        d.stop()


def test_a_displaced_session_parks_in_the_workers_ram_and_resumes_from_it(
    smollm2_path: Path, tmp_path: Path
) -> None:
    """With the RAM tier (the default), a session displaced from the one slot is held in the
    worker's memory: its next turn restores it from there (no file), answers as a full prefill
    would, and an unload still writes it to disk."""
    models = {MODEL: {"source": str(smollm2_path), "context_size": 2048, "parallel": 1}}
    d = start_daemon(tmp_path, models=models, config={"agents": {"park_idle_s": 0}})
    try:
        with d.http(timeout=300) as c:
            add_keeper(c)
            a = long_session(c)
            b = new_session(c, agent="keeper")
            send_turn(c, b["id"], "Hello, who are you?")  # displaces a, into RAM
            detail = c.get(f"/api/sessions/{a['id']}").json()
            assert detail["status"] == "parked" and detail["parked"] == [], "not on disk"
            back = send_turn(c, a["id"], QUESTION)
            t = back.done["timings"]
            assert t["kv_restored"] is True and t["kv_restore_tier"] == "ram", t
            assert t["cached_tokens"] > 600
            send_turn(c, b["id"], "And again?")  # a goes back to RAM
            unload(d, c)
            (entry,) = parked(c, a["id"])  # the unload wrote it out
            assert entry["n_tokens"] > 600
            reference = full_prefill_answer(d, c, a["id"], 2, QUESTION)
            assert reference.text == back.text
    finally:
        d.stop()
