"""Agents and sessions end to end: a real daemon, the real SmolLM2 model, real sandboxes.

One daemon serves the module. Replies are generated at temperature 0 with small max_tokens so the
module stays quick on two CPU cores; assertions are about what a user of the API can see (events,
the stored transcript, the files and sandboxes a session owns), not about what the model says.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import require
from tests.integration.daemon import Daemon, running_daemon
from tests.integration.sessions_client import new_session, send_turn

MODEL = "smollm2-135m-instruct"
SMALL = "smol-512"
QUICK = {"max_tokens": 12, "temperature": 0, "seed": 1}


@pytest.fixture(scope="module")
def daemon(smollm2_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    root = tmp_path_factory.mktemp("agents")
    with running_daemon(
        root,
        models={
            MODEL: {"source": str(smollm2_path), "context_size": 2048, "parallel": 2},
            SMALL: {"source": str(smollm2_path), "context_size": 512, "parallel": 1},
        },
        config={"agents": {"park_idle_s": 0, "max_steps": 3}},
    ) as d:
        yield d


@pytest.fixture
def http(daemon: Daemon) -> Iterator[httpx.Client]:
    with daemon.http(timeout=300) as c:
        yield c


def sandboxes_available(http: httpx.Client) -> bool:
    return bool(http.get("/api/status").json()["sandboxes"]["available"])


def test_the_shipped_agents_are_there_after_start(http: httpx.Client) -> None:
    agents = {a["name"]: a for a in http.get("/api/agents").json()["items"]}
    assert {"assistant", "coder"} <= set(agents)
    assert agents["coder"]["tools"] == ["run_code"] and agents["coder"]["sandbox"] == "python"
    assert agents["assistant"]["source"] == "profile"


def test_agents_can_be_created_read_updated_and_deleted(http: httpx.Client) -> None:
    spec = {
        "name": "pirate",
        "model": MODEL,
        "persona": "You talk like a pirate.",
        "params": {"temperature": 0},
    }
    created = http.post("/api/agents", json=spec)
    assert created.status_code == 201, created.text
    agent = created.json()
    assert agent["source"] == "api" and agent["id"].startswith("agt_")
    assert http.post("/api/agents", json=spec).status_code == 409
    bad_tool = http.post("/api/agents", json={**spec, "name": "x1", "tools": ["web_search"]})
    assert bad_tool.status_code == 400 and "run_code" in bad_tool.json()["error"]["message"]
    bad_model = http.post("/api/agents", json={**spec, "name": "x2", "model": "no-such-model"})
    assert bad_model.status_code == 404 and bad_model.json()["error"]["param"] == "model"
    bad_field = http.post("/api/agents", json={**spec, "name": "x3", "colour": "red"})
    assert bad_field.status_code == 400
    assert http.get("/api/agents/pirate").json()["id"] == agent["id"]
    patched = http.patch("/api/agents/pirate", json={"persona": "You talk like a parrot."})
    assert patched.status_code == 200 and patched.json()["persona"] == "You talk like a parrot."
    assert patched.json()["model"] == MODEL, "fields not in the patch stay"
    page = http.get("/api/agents", params={"limit": 1}).json()
    assert len(page["items"]) == 1 and page["next_after"]
    assert http.delete("/api/agents/pirate").status_code == 204
    assert http.get("/api/agents/pirate").status_code == 404


def test_deleting_an_agent_with_sessions_needs_with_sessions(http: httpx.Client) -> None:
    http.post("/api/agents", json={"name": "short-lived", "model": MODEL})
    s = new_session(http, agent="short-lived")
    r = http.delete("/api/agents/short-lived")
    assert r.status_code == 409 and "with its sessions" in r.json()["error"]["message"]
    assert (
        http.delete("/api/agents/short-lived", params={"with_sessions": "true"}).status_code == 204
    )
    assert http.get(f"/api/sessions/{s['id']}").status_code == 404


def test_a_turn_streams_tokens_and_is_stored_and_the_next_turn_reuses_the_slot(
    http: httpx.Client,
) -> None:
    s = new_session(http, agent="assistant")
    assert s["status"] == "created"
    first = send_turn(http, s["id"], "What is the capital of France?", **QUICK)
    assert first.status == 200
    assert first.names[0] == "message" and first.events[0][1]["message"]["role"] == "user"
    assert "token" in first.names and first.names[-1] == "done"
    assert first.names.index("token") < len(first.names) - 2
    tokens = "".join(d["text"] for d in first.named("token"))
    assert tokens == first.text and tokens
    done = first.done
    assert done["usage"]["completion_tokens"] > 0 and done["timings"]["prompt_tokens"] > 10
    assert done["timings"]["kv_restored"] is False

    second = send_turn(http, s["id"], "And of Italy?", **QUICK)
    assert second.done["timings"]["cached_tokens"] >= first.done["timings"]["prompt_tokens"], (
        "the session's slot still holds the first turn: only the new tokens are evaluated"
    )

    detail = http.get(f"/api/sessions/{s['id']}").json()
    assert [m["role"] for m in detail["messages"]] == ["user", "assistant", "user", "assistant"]
    assert detail["messages"][1]["content"] == first.text
    assert detail["status"] == "active" and detail["hot"] is True
    assert detail["title"] == "What is the capital of France?"
    listed = http.get("/api/sessions", params={"agent": "assistant"}).json()["items"]
    assert s["id"] in [x["id"] for x in listed]


def test_a_turn_without_streaming_answers_as_one_object(http: httpx.Client) -> None:
    s = new_session(http, agent="assistant")
    r = http.post(
        f"/api/sessions/{s['id']}/messages", json={"content": "Say yes.", "stream": False, **QUICK}
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert [m["role"] for m in body["messages"]] == ["user", "assistant"]
    assert body["done"]["message_id"] == body["messages"][-1]["id"]


def test_fork_copies_the_transcript_up_to_a_message(http: httpx.Client) -> None:
    s = new_session(http, agent="assistant")
    send_turn(http, s["id"], "Name a colour.", **QUICK)
    send_turn(http, s["id"], "Name another.", **QUICK)
    messages = http.get(f"/api/sessions/{s['id']}").json()["messages"]
    r = http.post(f"/api/sessions/{s['id']}/fork", json={"at_message": messages[1]["id"]})
    assert r.status_code == 201, r.text
    fork = http.get(f"/api/sessions/{r.json()['id']}").json()
    assert fork["parent_id"] == s["id"] and fork["forked_at_message"] == messages[1]["id"]
    assert [m["content"] for m in fork["messages"]] == [m["content"] for m in messages[:2]]
    assert send_turn(http, fork["id"], "Name a fruit.", **QUICK).names[-1] == "done"
    assert len(http.get(f"/api/sessions/{s['id']}").json()["messages"]) == 4, (
        "the parent is unchanged"
    )
    whole = http.post(f"/api/sessions/{s['id']}/fork")
    assert whole.status_code == 201, whole.text
    assert whole.json()["message_count"] == 4
    missing = http.post(f"/api/sessions/{s['id']}/fork", json={"at_message": "msg_nope"})
    assert missing.status_code == 404


def test_bad_turn_requests_are_refused_before_anything_is_stored(http: httpx.Client) -> None:
    s = new_session(http, agent="assistant")
    assert send_turn(http, s["id"], "   ").status == 400
    assert send_turn(http, s["id"], "hi", colour="red").status == 400
    tc = send_turn(http, s["id"], "hi", tool_choice="required")
    assert tc.status == 400 and tc.body["error"]["param"] == "tool_choice"
    assert send_turn(http, "ses_nope", "hi").status == 404
    coder = new_session(http, agent="coder")
    wrong = send_turn(
        http, coder["id"], "hi", tool_choice={"type": "function", "function": {"name": "rm_rf"}}
    )
    assert wrong.status == 400 and "rm_rf" in wrong.body["error"]["message"]
    assert http.get(f"/api/sessions/{coder['id']}").json()["messages"] == []
    assert http.get(f"/api/sessions/{s['id']}").json()["messages"] == []
    assert http.post("/api/sessions", json={"agent": "nobody"}).status_code == 404
    assert http.post("/api/sessions", json={}).status_code == 400
    assert http.get("/api/sessions", params={"status": "sleeping"}).status_code == 400


def test_a_client_that_disconnects_mid_turn_leaves_the_session_usable(http: httpx.Client) -> None:
    s = new_session(http, agent="assistant")
    with http.stream(
        "POST",
        f"/api/sessions/{s['id']}/messages",
        json={
            "content": "Write a long story about a lighthouse.",
            "max_tokens": 400,
            "temperature": 0,
        },
    ) as r:
        for line in r.iter_lines():
            if line == "event: token":
                break  # hang up after the first token
    after = send_turn(http, s["id"], "Now just say OK.", **QUICK)
    assert after.status == 200 and after.names[-1] == "done", after.events[-1:]
    roles = [m["role"] for m in http.get(f"/api/sessions/{s['id']}").json()["messages"]]
    assert roles == ["user", "user", "assistant"], (
        "the cancelled reply is not stored, nothing else is lost"
    )


def test_the_code_agent_runs_code_in_its_session_sandbox(
    http: httpx.Client, daemon: Daemon
) -> None:
    require(sandboxes_available(http), "this host cannot run sandboxes")
    s = new_session(http, agent="coder")
    t = send_turn(
        http,
        s["id"],
        "Compute the sum of the numbers from 1 to 100.",
        temperature=0,
        seed=1,
        max_tokens=96,
        tool_choice={"type": "function", "function": {"name": "run_code"}},
    )
    assert t.status == 200 and t.names[-1] == "done", t.events[-3:]
    (call,) = t.named("tool_call")[:1]
    assert call["name"] == "run_code"
    result = t.named("tool_result")[0]
    assert result["status"] in ("ok", "error") and result["sandbox_id"]
    assert t.done["steps"] >= 2
    detail = http.get(f"/api/sessions/{s['id']}").json()
    roles = [m["role"] for m in detail["messages"]]
    assert roles[:3] == ["user", "assistant", "tool"] and roles[-1] == "assistant"
    assert detail["messages"][1]["tool_calls"][0]["function"]["name"] == "run_code"
    assert detail["messages"][2]["content"] == result["content"], (
        "the model read what the sandbox returned"
    )
    assert detail["messages"][-1]["content"] is not None
    run = detail["tool_runs"][0]
    assert run["status"] == result["status"] and run["call_id"] == call["id"]
    sandbox = detail["sandbox_id"]
    assert sandbox == result["sandbox_id"]
    assert http.get(f"/api/sandboxes/{sandbox}").status_code == 200

    http.post(f"/api/models/{MODEL}/unload")  # parks the session's KV state
    daemon.wait_state(MODEL, {"unloaded"})
    kv_files = [Path(e["path"]) for e in http.get(f"/api/sessions/{s['id']}").json()["parked"]]
    assert kv_files and all(p.is_file() for p in kv_files)
    assert http.delete(f"/api/sessions/{s['id']}").status_code == 204
    assert http.get(f"/api/sandboxes/{sandbox}").status_code == 404, (
        "the sandbox went with the session"
    )
    assert not any(p.exists() for p in kv_files), "and so did its parked KV state"


def test_history_beyond_the_context_drops_the_oldest_turns_with_a_marker(
    http: httpx.Client,
) -> None:
    http.post(
        "/api/agents",
        json={
            "name": "small",
            "model": SMALL,
            "persona": "You are brief.",
            "params": {"max_tokens": 8, "temperature": 0},
        },
    )
    s = new_session(http, agent="small")
    filler = (
        "Here is a note about the weather, the sea, the boats and the harbour. " * 5
    )  # ~80 tokens
    dropped_at = None
    for i in range(8):
        t = send_turn(http, s["id"], f"Note {i}: {filler}")
        assert t.names[-1] == "done", t.events[-1]
        if t.done["timings"]["context_dropped"]:
            dropped_at = i
            break
    assert dropped_at is not None and dropped_at >= 2, (
        "a 512-token context holds a couple of these turns"
    )
    messages = http.get(f"/api/sessions/{s['id']}").json()["messages"]
    (marker,) = [m for m in messages if m["meta"].get("context_marker")]
    assert marker["role"] == "system" and "dropped" in marker["content"]
    assert marker["meta"]["context_dropped"] >= 2
    start = marker["meta"]["context_start_seq"]
    current_user = [m for m in messages if m["role"] == "user"][-1]
    assert start <= current_user["seq"], "the turn in progress stays in the window"
    assert messages[-1]["role"] == "assistant"

    steady = send_turn(http, s["id"], "Short question: are you there?")
    assert steady.done["timings"]["context_dropped"] == 0, (
        "the window moved far enough to leave room"
    )
    assert steady.done["timings"]["cached_tokens"] > 50, (
        "and its start stayed put, so the KV prefix is reused"
    )

    huge = send_turn(http, s["id"], "word " * 700)
    assert huge.status == 200, huge.body
    assert (
        huge.names[-1] == "error"
        and huge.named("error")[0]["error"]["code"] == "context_length_exceeded"
    )
    assert send_turn(http, s["id"], "Still there?").names[-1] == "done", (
        "the session goes on after the error"
    )


def run_cli(
    daemon: Daemon, *args: str, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "appliance", *args, "--url", daemon.url],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_appliance_chat_and_the_session_commands(daemon: Daemon) -> None:
    chat = run_cli(daemon, "chat", "--agent", "assistant", "--timings", stdin="Say hello.\n")
    assert chat.returncode == 0, chat.stderr
    sid = chat.stderr.split("session ", 1)[1].split()[0]
    assert "first token" in chat.stdout and chat.stdout.strip()
    again = run_cli(daemon, "chat", "--session", sid, "-m", "Say bye.")
    assert again.returncode == 0, again.stderr
    listing = run_cli(daemon, "sessions", "list")
    assert sid in listing.stdout and "assistant" in listing.stdout
    shown = run_cli(daemon, "sessions", "show", sid)
    assert shown.returncode == 0 and "Say hello." in shown.stdout and "Say bye." in shown.stdout
    agents = run_cli(daemon, "agents", "list")
    assert "coder" in agents.stdout and "run_code" in agents.stdout
    assert run_cli(daemon, "sessions", "delete", sid).returncode == 0
    gone = run_cli(daemon, "sessions", "show", sid)
    assert gone.returncode == 1 and "404" in gone.stderr
    bad = run_cli(daemon, "chat", "--agent", "nobody", "-m", "hi")
    assert bad.returncode == 1 and "no agent 'nobody'" in bad.stderr
