"""An agent whose profile names MCP servers, end to end: a real daemon, the real SmolLM2 model,
the SDK-written stdio server of mcp_fixtures run in a real sandbox.

The API refuses hostile `mcp_servers` entries by field; `GET /api/agents/{id}/tools` (and
`appliance agents tools`) lists the server's tools with their source; a turn forced to call
`calc__add` runs it in the server and stores the run in the transcript like run_code's; a server
that does not start gives the turn an error naming it and the session goes on.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import require
from tests.integration.daemon import Daemon, running_daemon
from tests.integration.sessions_client import new_session, send_turn

MODEL = "smollm2-135m-instruct"
FIXTURE = Path(__file__).parent / "mcp_fixtures" / "calc_server.py"


def calc_server(**kw: Any) -> dict[str, Any]:
    return {
        "name": "calc",
        "command": str(Path(sys.prefix) / "bin" / "python"),
        "args": [str(FIXTURE)],
        "paths": [str(FIXTURE.parent), sys.prefix, sys.base_prefix],
        "tools": ["add", "look_around"],
        "timeout_s": 30,
        **kw,
    }


@pytest.fixture(scope="module")
def daemon(smollm2_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    root = tmp_path_factory.mktemp("mcp-agents")
    with running_daemon(
        root,
        models={MODEL: {"source": str(smollm2_path), "context_size": 2048, "parallel": 1}},
        config={"agents": {"park_idle_s": 0, "max_steps": 2}},
    ) as d:
        yield d


@pytest.fixture
def http(daemon: Daemon) -> Iterator[httpx.Client]:
    with daemon.http(timeout=300) as c:
        require(
            bool(c.get("/api/status").json()["sandboxes"]["available"]),
            "this host cannot run sandboxes",
        )
        yield c


def test_hostile_mcp_servers_are_refused_by_field(http: httpx.Client, daemon: Daemon) -> None:
    base = {"name": "hostile", "model": MODEL}
    cases = [
        ({"name": "calc", "url": "file:///etc/passwd"}, "mcp_servers[0].url"),
        ({"name": "calc", "url": "http://h/mcp", "headers": {"X": "a\r\nB: c"}}, "headers"),
        ({"name": "calc", "command": "python3", "env": {"PATH": "/tmp"}}, "env"),
        ({"name": "calc"}, "command"),
        ({"name": "calc", "command": "python3", "paths": [str(daemon.state_dir)]}, "paths"),
        ({"name": "calc", "command": "python3", "paths": [str(daemon.root)]}, "paths"),
    ]
    for entry, field in cases:
        r = http.post("/api/agents", json={**base, "mcp_servers": [entry]})
        assert r.status_code == 400, r.text
        assert field in (r.json()["error"]["param"] or r.json()["error"]["message"]), r.text
    shape = http.post("/api/agents", json={**base, "mcp_servers": [{"name": "Bad__Name"}]})
    assert shape.status_code == 400 and "mcp_servers" in shape.text
    assert http.get("/api/agents/hostile").status_code == 404, "nothing was stored"
    # a PATCH is checked as strictly, before any path is resolved (the fuzzer found a NUL byte
    # in a path reaching Path.resolve: a 500)
    assert http.post("/api/agents", json={**base, "name": "patched"}).status_code in (200, 201)
    for entry in (
        {"name": "calc", "command": "python3", "paths": ["/opt/\x00calc"]},
        {"name": "calc", "command": "py\x00thon3"},
    ):
        r = http.patch("/api/agents/patched", json={"mcp_servers": [entry]})
        assert r.status_code == 400, r.text
        assert "mcp_servers[0]" in r.json()["error"]["param"], r.text
    assert http.get("/api/agents/patched").json()["mcp_servers"] == []


def test_an_agent_calls_its_stdio_mcp_server_in_a_sandbox(
    http: httpx.Client, daemon: Daemon
) -> None:
    secret = daemon.root / "host-secret.txt"
    secret.write_text("not for sandboxes")
    host_paths = [__file__, str(daemon.state_dir), "/etc/shadow", str(secret)]
    created = http.post(
        "/api/agents",
        json={
            "name": "calculator",
            "model": MODEL,
            "persona": "You add numbers with the calc tools.",
            "mcp_servers": [calc_server(env={"LOOK_PATHS": "\n".join(host_paths)})],
        },
    )
    assert created.status_code == 201, created.text
    assert created.json()["mcp_servers"][0]["name"] == "calc"

    listing = http.get("/api/agents/calculator/tools").json()
    assert {(t["name"], t["source"]) for t in listing["items"]} == {
        ("calc__add", "mcp:calc"),
        ("calc__look_around", "mcp:calc"),
    }, "the allowlist leaves crash out"
    cli = subprocess.run(
        [sys.executable, "-m", "appliance", "agents", "tools", "calculator", "--url", daemon.url],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert cli.returncode == 0 and "calc__add" in cli.stdout and "mcp:calc" in cli.stdout, cli

    s = new_session(http, agent="calculator")
    t = send_turn(
        http,
        s["id"],
        "What is 2 + 3?",
        temperature=0,
        seed=1,
        max_tokens=48,
        tool_choice={"type": "function", "function": {"name": "calc__add"}},
    )
    assert t.status == 200 and t.names[-1] == "done", t.events[-3:]
    call = t.named("tool_call")[0]
    result = t.named("tool_result")[0]
    assert call["name"] == "calc__add" and result["source"] == "mcp:calc"
    assert result["status"] == "ok", result
    detail = http.get(f"/api/sessions/{s['id']}").json()
    run = detail["tool_runs"][0]
    assert run["tool"] == "calc__add" and run["status"] == "ok"
    assert run["result"] == result["content"]
    tool_msg = next(m for m in detail["messages"] if m["role"] == "tool")
    assert tool_msg["content"] == result["content"] and tool_msg["name"] == "calc__add"

    look = send_turn(
        http,
        s["id"],
        'Call look_around with {"paths": []}.',
        temperature=0,
        seed=1,
        max_tokens=160,
        tool_choice={"type": "function", "function": {"name": "calc__look_around"}},
    )
    assert look.status == 200 and look.names[-1] == "done", look.events[-3:]
    assert look.named("tool_result"), [e for e in look.events if e[0] != "token"]
    seen = look.named("tool_result")[0]
    assert seen["status"] == "ok", seen
    facts = seen["structured_content"]
    assert facts["reached_internet"] is False and facts["interfaces"] in ([], ["lo"])
    assert not any(facts["exists"][p] for p in host_paths), f"host files are hidden: {facts}"
    assert facts["uid"] != 0
    assert len(server_processes()) == 1, "the session's turns share one server"
    assert http.delete(f"/api/sessions/{s['id']}").status_code == 204
    deadline = time.monotonic() + 15
    while server_processes() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not server_processes(), "the server stopped with its session"


def server_processes() -> list[int]:
    """Pids of sandboxed calc servers (the interpreter, not bwrap or setpriv before it)."""
    out = []
    for d in Path("/proc").iterdir():
        try:
            argv = (d / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if len(argv) > 1 and argv[0].endswith(b"python") and argv[1] == str(FIXTURE).encode():
            out.append(int(d.name))
    return out


def test_a_server_that_fails_to_start_is_a_turn_error_naming_it(http: httpx.Client) -> None:
    r = http.post(
        "/api/agents",
        json={
            "name": "broken-tools",
            "model": MODEL,
            "mcp_servers": [{"name": "gone", "command": "/bin/false"}],
        },
    )
    assert r.status_code == 201, r.text
    s = new_session(http, agent="broken-tools")
    t = send_turn(http, s["id"], "hi", max_tokens=8, temperature=0)
    assert t.status == 200 and t.names[-1] == "error", t.events[-3:]
    assert "'gone'" in t.named("error")[0]["error"]["message"]
    patched = http.patch("/api/agents/broken-tools", json={"mcp_servers": []})
    assert patched.status_code == 200 and patched.json()["mcp_servers"] == []
    again = send_turn(http, s["id"], "hi again", max_tokens=8, temperature=0)
    assert again.status == 200 and again.names[-1] == "done", "the session goes on"
