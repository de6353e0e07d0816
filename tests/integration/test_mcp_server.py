"""The appliance as an MCP server: the official `mcp` SDK's client against a live daemon's `/mcp`.

One daemon (with an API token, so every call carries it) serves the module: the SmolLM2 chat
model, the MiniLM embedding model, real bwrap sandboxes. Each protocol the SDK negotiates is
tried (the 2025 handshakes and the 2026-07-28 requests); every tool is called with good arguments
and with bad ones (which answer `isError` results that say what to do, never protocol errors);
resources and prompts are read; the browser boundary and the token check guard `/mcp` like every
route.
"""

from __future__ import annotations

import base64
import json
import re
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.types import CallToolResult, TextContent, TextResourceContents

from tests.conftest import require
from tests.integration.daemon import REPO, Daemon, running_daemon

MODEL = "smollm2-135m-instruct"
EMBED = "minilm"
TOOLS = {
    "run_code",
    "sandbox_create",
    "sandbox_exec",
    "sandbox_read_file",
    "sandbox_write_file",
    "sandbox_delete",
    "list_models",
    "chat",
    "embed",
    "ask_agent",
}
ACCEPT = "application/json, text/event-stream"


def create_token(state: Path) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "appliance", "token", "create", "mcp", "--state-dir", str(state)],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=True,
    )
    found = re.search(r"apl_\S+", done.stdout)
    assert found is not None, done.stdout
    return found.group(0)


@pytest.fixture(scope="module")
def daemon(
    smollm2_path: Path, minilm_gguf_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Daemon]:
    root = tmp_path_factory.mktemp("mcp")
    token = create_token(root / "state")
    with running_daemon(
        root,
        models={
            MODEL: {"source": str(smollm2_path), "context_size": 1024, "parallel": 1},
            EMBED: {"source": str(minilm_gguf_path), "kind": "embedding", "context_size": 512},
        },
        config={"agents": {"park_idle_s": 0, "max_steps": 2}},
    ) as d:
        d.headers = {"Authorization": f"Bearer {token}"}
        yield d


@pytest.fixture(scope="module")
def sandboxes(daemon: Daemon) -> bool:
    with daemon.http() as c:
        return bool(c.get("/api/status").json()["sandboxes"]["available"])


@asynccontextmanager
async def mcp_client(daemon: Daemon, mode: str = "legacy") -> AsyncIterator[Client]:
    http = httpx2.AsyncClient(headers=daemon.headers, timeout=httpx2.Timeout(30, read=300))
    async with (
        http,
        Client(streamable_http_client(daemon.url + "/mcp", http_client=http), mode=mode) as c,
    ):  # type: ignore[arg-type]
        yield c


def structured(result: CallToolResult) -> dict[str, Any]:
    assert not result.is_error, result.content
    assert result.structured_content is not None
    return result.structured_content


def error_text(result: CallToolResult) -> str:
    assert result.is_error, result
    block = result.content[0]
    assert isinstance(block, TextContent)
    return block.text


# --- the protocol ---------------------------------------------------------------------------------


def initialize(daemon: Daemon, version: str) -> httpx.Response:
    body = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {
            "protocolVersion": version,
            "capabilities": {},
            "clientInfo": {"name": "test", "version": "1"},
        },
    }
    with daemon.http() as c:
        return c.post("/mcp", json=body, headers={"Accept": ACCEPT})


def answer(r: httpx.Response) -> dict[str, Any]:
    """The JSON-RPC answer of a POST, sent as JSON or as one SSE event."""
    if r.headers["content-type"].startswith("application/json"):
        return r.json()  # type: ignore[no-any-return]
    data = [line[5:].strip() for line in r.text.splitlines() if line.startswith("data:")]
    return json.loads(next(d for d in data if d))  # type: ignore[no-any-return]


@pytest.mark.parametrize("version", ["2025-06-18", "2025-11-25"])
def test_initialize_negotiates_each_handshake_version(daemon: Daemon, version: str) -> None:
    r = initialize(daemon, version)
    assert r.status_code == 200, r.text
    result = answer(r)["result"]
    assert result["protocolVersion"] == version
    assert result["serverInfo"]["name"] == "appliance"
    assert {"tools", "resources", "prompts"} <= set(result["capabilities"])
    assert r.headers.get("mcp-session-id")


async def test_the_sdk_client_lists_every_tool_with_both_schemas(daemon: Daemon) -> None:
    for mode, version in (("legacy", "2025-11-25"), ("2026-07-28", "2026-07-28")):
        async with mcp_client(daemon, mode) as c:
            assert c.session.protocol_version == version
            tools = {t.name: t for t in (await c.list_tools()).tools}
            assert set(tools) == TOOLS, mode
            for t in tools.values():
                assert t.input_schema["type"] == "object" and t.output_schema is not None, t.name
                assert t.description
            assert {"language", "code", "stdin", "files", "timeout_s"} <= set(
                tools["run_code"].input_schema["properties"]
            )


def test_mcp_needs_the_token_and_refuses_a_foreign_origin(daemon: Daemon) -> None:
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
    with httpx.Client(base_url=daemon.url) as anonymous:
        r = anonymous.post("/mcp", json=body, headers={"Accept": ACCEPT})
        assert r.status_code == 401 and "token" in r.json()["error"]["message"]
    with daemon.http() as c:
        r = c.post("/mcp", json=body, headers={"Accept": ACCEPT, "Origin": "https://evil.example"})
        assert r.status_code == 403 and r.json()["error"]["code"] == "origin_not_allowed"
        r = c.post("/mcp", content=b"{}", headers={"Content-Type": "text/plain"})
        assert r.status_code == 415


# --- code runs and sandboxes ----------------------------------------------------------------------


async def test_run_code_runs_a_program_and_says_what_went_wrong(
    daemon: Daemon, sandboxes: bool
) -> None:
    require(sandboxes, "bwrap sandboxes are not available here")
    async with mcp_client(daemon) as c:
        data = base64.b64encode(b"21\n").decode()
        ok = await c.call_tool(
            "run_code",
            {
                "language": "python",
                "code": "import sys\nn = int(open('n.txt').read())\nprint(n * 2, sys.stdin.read())",
                "stdin": "hi",
                "files": {"n.txt": data},
                "timeout_s": 10,
            },
        )
        out = structured(ok)
        assert out["status"] == "ok" and out["stdout"].strip() == "42 hi"
        assert isinstance(ok.content[0], TextContent) and "42 hi" in ok.content[0].text

        failed = structured(await c.call_tool("run_code", {"language": "python", "code": "1/0"}))
        assert failed["status"] == "error" and "ZeroDivisionError" in failed["stderr"]

        unknown = error_text(await c.call_tool("run_code", {"language": "cobol", "code": "x"}))
        assert "cobol" in unknown
        missing = error_text(await c.call_tool("run_code", {"language": "python"}))
        assert "code" in missing


async def test_run_code_and_sandboxes_in_an_image(
    daemon: Daemon, sandboxes: bool, tmp_path: Path
) -> None:
    from tests.fixtures.oci_images import busybox_layout, have_busybox, tar_directory

    require(sandboxes, "bwrap sandboxes are not available here")
    require(have_busybox(), "a static /bin/busybox is needed (apt install busybox-static)")
    ref = "localhost/mcp-busybox:1"
    layout = tar_directory(busybox_layout(tmp_path / "layout"), tmp_path / "layout.tar")
    with daemon.http() as h:
        r = h.post(
            "/api/images/import",
            params={"name": ref},
            content=layout.read_bytes(),
            headers={"Content-Type": "application/octet-stream"},
        )
        assert r.status_code == 201, r.text
    async with mcp_client(daemon) as c:
        code = "cat /etc/added.txt; test -e /usr/bin/python3 || echo no-host-python"
        out = structured(
            await c.call_tool("run_code", {"language": "sh", "code": code, "image": ref})
        )
        assert out["stdout"] == "added by layer two\nno-host-python\n", out
        sb = structured(await c.call_tool("sandbox_create", {"language": "sh", "image": ref}))
        cell = structured(
            await c.call_tool("sandbox_exec", {"sandbox_id": sb["id"], "code": "echo $GREETING"})
        )
        assert cell["stdout"] == "hello-from-image\n", cell
        await c.call_tool("sandbox_delete", {"sandbox_id": sb["id"]})
        missing = error_text(
            await c.call_tool("run_code", {"language": "sh", "code": "x", "image": "nope:1"})
        )
        assert "appliance images pull" in missing


async def test_a_sandbox_keeps_state_and_files_and_goes_with_the_session(
    daemon: Daemon, sandboxes: bool
) -> None:
    require(sandboxes, "bwrap sandboxes are not available here")
    async with mcp_client(daemon) as c:
        sb = structured(await c.call_tool("sandbox_create", {"language": "python"}))
        sid = sb["id"]
        assert sb["language"] == "python"
        structured(await c.call_tool("sandbox_exec", {"sandbox_id": sid, "code": "x = 20"}))
        cell = structured(
            await c.call_tool(
                "sandbox_exec",
                {"sandbox_id": sid, "code": "open('out.txt', 'w').write(str(x + 1))\nx + 22"},
            )
        )
        assert cell["result"] == "42"
        wrote = structured(
            await c.call_tool(
                "sandbox_write_file", {"sandbox_id": sid, "path": "in/a.txt", "text": "hello"}
            )
        )
        assert wrote == {"path": "in/a.txt", "size": 5}
        read = structured(
            await c.call_tool("sandbox_read_file", {"sandbox_id": sid, "path": "out.txt"})
        )
        assert read["text"] == "21"

        # the workspace's files are resources
        listed = {str(r.uri) for r in (await c.list_resources()).resources}
        uri = f"appliance://sandboxes/{sid}/files/in/a.txt"
        assert uri in listed
        contents = (await c.read_resource(uri)).contents[0]
        assert isinstance(contents, TextResourceContents) and contents.text == "hello"

        # bad arguments: isError results that say what to do
        both = error_text(
            await c.call_tool(
                "sandbox_write_file",
                {"sandbox_id": sid, "path": "a", "text": "x", "base64": "eA=="},
            )
        )
        assert "exactly one" in both
        gone = error_text(
            await c.call_tool("sandbox_read_file", {"sandbox_id": sid, "path": "nope.txt"})
        )
        assert "nope.txt" in gone
        escape = error_text(
            await c.call_tool(
                "sandbox_write_file", {"sandbox_id": sid, "path": "../x", "text": "x"}
            )
        )
        assert escape
        nobody = error_text(
            await c.call_tool("sandbox_exec", {"sandbox_id": "sb_nope", "code": "1"})
        )
        assert "sb_nope" in nobody

        other = structured(await c.call_tool("sandbox_create", {"language": "bash"}))
        assert structured(await c.call_tool("sandbox_delete", {"sandbox_id": other["id"]}))[
            "deleted"
        ]
        assert error_text(await c.call_tool("sandbox_delete", {"sandbox_id": other["id"]}))

    # the MCP session ended (the client's DELETE): its sandbox is reaped with it
    deadline = time.monotonic() + 10
    with daemon.http() as h:
        while h.get(f"/api/sandboxes/{sid}").status_code != 404:
            assert time.monotonic() < deadline, "the MCP session's sandbox outlived it"
            time.sleep(0.1)


# --- models and agents ----------------------------------------------------------------------------


async def test_list_models_chat_and_embed(daemon: Daemon) -> None:
    async with mcp_client(daemon, "2026-07-28") as c:
        models = {m["id"]: m for m in structured(await c.call_tool("list_models", {}))["models"]}
        assert models[MODEL]["kind"] == "chat" and models[EMBED]["kind"] == "embedding"

        chat = structured(
            await c.call_tool(
                "chat",
                {"model": MODEL, "prompt": "Say hi.", "max_tokens": 8, "temperature": 0, "seed": 1},
            )
        )
        assert chat["model"] == MODEL and chat["content"] and chat["completion_tokens"] > 0

        emb = structured(await c.call_tool("embed", {"model": EMBED, "input": ["a cat", "a dog"]}))
        assert len(emb["embeddings"]) == 2 and emb["dimensions"] == len(emb["embeddings"][0]) > 0

        no_model = error_text(await c.call_tool("chat", {"model": "gpt-9", "prompt": "hi"}))
        assert "gpt-9" in no_model
        wrong_kind = error_text(await c.call_tool("embed", {"model": MODEL, "input": ["x"]}))
        assert wrong_kind
        empty = error_text(await c.call_tool("embed", {"model": EMBED, "input": []}))
        assert "input" in empty


async def test_ask_agent_runs_turns_in_a_session_whose_transcript_is_a_resource(
    daemon: Daemon,
) -> None:
    async with mcp_client(daemon) as c:
        args = {"agent": "assistant", "message": "Hello!", "max_tokens": 8, "temperature": 0}
        first = structured(await c.call_tool("ask_agent", args))
        sid = first["session_id"]
        assert first["reply"] and first["messages"][0]["role"] == "user"
        again = structured(
            await c.call_tool("ask_agent", {**args, "session_id": sid, "message": "And?"})
        )
        assert again["session_id"] == sid

        transcript = (await c.read_resource(f"appliance://sessions/{sid}")).contents[0]
        assert isinstance(transcript, TextResourceContents)
        roles = [m["role"] for m in json.loads(transcript.text)["messages"]]
        assert roles.count("user") == 2 and roles.count("assistant") >= 2
        assert f"appliance://sessions/{sid}" in {
            str(r.uri) for r in (await c.list_resources()).resources
        }

        no_agent = error_text(await c.call_tool("ask_agent", {"agent": "nobody", "message": "x"}))
        assert "nobody" in no_agent
        no_session = error_text(
            await c.call_tool(
                "ask_agent", {"agent": "assistant", "message": "x", "session_id": "ses_nope"}
            )
        )
        assert "ses_nope" in no_session


async def test_each_agent_persona_is_a_prompt(daemon: Daemon) -> None:
    async with mcp_client(daemon) as c:
        names = {p.name for p in (await c.list_prompts()).prompts}
        assert {"assistant", "coder"} <= names
        prompt = await c.get_prompt("coder")
        block = prompt.messages[0].content
        assert isinstance(block, TextContent) and block.text
        templates = {t.uri_template for t in (await c.list_resource_templates()).resource_templates}
        assert "appliance://sessions/{session_id}" in templates


def test_mcp_requests_are_counted_under_their_route(daemon: Daemon) -> None:
    initialize(daemon, "2025-11-25")
    with daemon.http() as c:
        metrics = c.get("/metrics").text
    assert re.search(r'appliance_http_requests_total\{[^}]*route="/mcp"', metrics), metrics[:2000]
