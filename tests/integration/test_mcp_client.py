"""Agents as MCP clients: an agent's stdio MCP server runs in a real bwrap sandbox, its tools are
offered and called through the ToolBox, a server that crashes mid-call is a tool error naming it
and is started again, and a Streamable HTTP server on a loopback port works the same way.

The server is tests/integration/mcp_fixtures/calc_server.py, written with the official SDK.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from appliance.config import SandboxConfig
from appliance.sandbox.profiles import ProfileCatalog
from appliance.sandbox.service import SandboxService
from appliance.sessions.mcp_clients import McpClients, McpServerError
from appliance.sessions.tools import ToolBox, ToolCallError, ToolContext
from appliance.store import Agent, GenerationParams, McpServerSpec
from tests.conftest import require
from tests.integration.conftest import SANDBOX_REPO, sandbox_free_port

FIXTURE = Path(__file__).parent / "mcp_fixtures" / "calc_server.py"
VENV = Path(sys.prefix)
"""The server's virtual environment (the SDK) and the interpreter it was made from."""


def stdio_spec(**kw: Any) -> McpServerSpec:
    fields: dict[str, Any] = {
        "name": "calc",
        "command": str(VENV / "bin" / "python"),
        "args": [str(FIXTURE)],
        "paths": [str(FIXTURE.parent), str(VENV), sys.base_prefix],
        "timeout_s": 20,
        **kw,
    }
    return McpServerSpec(**fields)


def agent(*servers: McpServerSpec) -> Agent:
    return Agent(
        id="agt_test",
        name="calc-agent",
        model="m",
        persona="",
        description="",
        tools=[],
        sandbox=None,
        params=GenerationParams(),
        mcp_servers=list(servers),
        source="api",
        source_path=None,
        created=0.0,
        updated=0.0,
    )


def call(name: str, args: str) -> dict[str, Any]:
    return {"id": "c1", "type": "function", "function": {"name": name, "arguments": args}}


@pytest.fixture
async def service(tmp_path: Path) -> AsyncIterator[SandboxService]:
    catalog = ProfileCatalog.load([SANDBOX_REPO / "profiles" / "sandboxes"])
    svc = SandboxService(SandboxConfig(pool={}), catalog=catalog, root=tmp_path / "sandboxes")
    await svc.start()
    try:
        require(not svc.unavailable, f"this host cannot run sandboxes: {svc.unavailable}")
        yield svc
    finally:
        await svc.stop()


async def test_a_stdio_server_runs_sandboxed_and_its_tools_are_offered_and_called(
    service: SandboxService,
) -> None:
    mcp = McpClients(service)
    box = ToolBox([], mcp)
    try:
        names, specs = await box.offer("s1", agent(stdio_spec()))
        assert names == ["calc__add", "calc__look_around", "calc__nap", "calc__crash", "calc__grow"]
        assert specs is not None
        add = next(s for s in specs if s["function"]["name"] == "calc__add")
        assert add["function"]["parameters"]["required"] == ["a", "b"]

        name, args = box.check(names, call("calc__add", '{"a": 2, "b": 40}'), "s1")
        out = await box.run(ToolContext("s1", None), name, args)
        assert out.status == "ok" and out.content == "42", out
        assert out.detail["source"] == "mcp:calc"
        assert out.detail["structured_content"] == {"result": 42}
        with pytest.raises(ToolCallError, match="calc__add"):
            box.check(names, call("calc__add", '{"a": "two"}'), "s1")

        host_files = ["/etc/shadow", "/home", str(Path.home()), "/work", "/proc/1/environ"]
        look = await box.run(
            ToolContext("s1", None), "calc__look_around", {"paths": [*host_files, str(FIXTURE)]}
        )
        seen = look.detail["structured_content"]
        assert seen["exists"][str(FIXTURE)] is True, "the server sees its own script"
        for p in host_files[:2]:
            assert seen["exists"][p] is False, f"the sandbox shows the host's {p}"
        assert seen["interfaces"] in ([], ["lo"]) and seen["reached_internet"] is False
        assert seen["uid"] != 0

        conn = mcp.running("s1", "calc")
        assert conn is not None and conn.alive
        again = await box.offer("s1", agent(stdio_spec()))
        assert mcp.running("s1", "calc") is conn and again[0] == names, "reused by the session"
    finally:
        await mcp.stop()


async def test_a_server_that_crashes_mid_call_is_a_tool_error_and_comes_back(
    service: SandboxService,
) -> None:
    mcp = McpClients(service)
    box = ToolBox([], mcp)
    try:
        await box.offer("s2", agent(stdio_spec()))
        out = await box.run(ToolContext("s2", None), "calc__crash", {"code": 3})
        assert out.status == "error" and "'calc'" in out.content and "stopped" in out.content, out
        after = await box.run(ToolContext("s2", None), "calc__add", {"a": 1, "b": 1})
        assert after.status == "ok" and after.content == "2", "the server was started again"
    finally:
        await mcp.stop()


async def test_a_server_that_cannot_start_names_itself(service: SandboxService) -> None:
    mcp = McpClients(service)
    box = ToolBox([], mcp)
    broken = McpServerSpec(name="broken", command="/bin/false")
    try:
        with pytest.raises(McpServerError, match="'broken'"):
            await box.offer("s3", agent(broken))
        listing = await box.listing(agent(stdio_spec(), broken))
        by_source = {t.source: t for t in listing}
        assert by_source["mcp:broken"].error and "broken" in by_source["mcp:broken"].error
        assert {t.name for t in listing if t.source == "mcp:calc"} >= {"calc__add"}
        assert not mcp._conns, "the listing's servers were stopped"
    finally:
        await mcp.stop()


async def test_idle_servers_are_stopped(service: SandboxService) -> None:
    mcp = McpClients(service, idle_s=0.2)
    try:
        await mcp.connection("s4", stdio_spec())
        deadline = time.monotonic() + 10
        while mcp.running("s4", "calc") is not None and time.monotonic() < deadline:
            await _sleep(0.1)
        assert mcp.running("s4", "calc") is None
    finally:
        await mcp.stop()


async def _sleep(s: float) -> None:
    import asyncio

    await asyncio.sleep(s)


@pytest.fixture(scope="module")
def http_server() -> Iterator[str]:
    import uvicorn

    from tests.integration.mcp_fixtures.calc_server import http_app

    port = sandbox_free_port()
    server = uvicorn.Server(
        uvicorn.Config(http_app(), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, name="mcp-http-fixture", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the MCP fixture did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


async def test_a_streamable_http_server_on_a_loopback_port(
    service: SandboxService, http_server: str
) -> None:
    mcp = McpClients(service)
    box = ToolBox([], mcp)
    remote = McpServerSpec(name="remote", url=http_server, tools=["add"], timeout_s=20)
    try:
        names, _ = await box.offer("s5", agent(remote))
        assert names == ["remote__add"], "only the allowlisted tool"
        out = await box.run(ToolContext("s5", None), "remote__add", {"a": 20, "b": 22})
        assert out.status == "ok" and out.content == "42"
    finally:
        await mcp.stop()


async def test_tools_list_changed_is_listed_again_at_the_next_turn(service: SandboxService) -> None:
    mcp = McpClients(service)
    box = ToolBox([], mcp)
    try:
        names, _ = await box.offer("s6", agent(stdio_spec()))
        assert "calc__multiply" not in names
        grown = await box.run(ToolContext("s6", None), "calc__grow", {})
        assert grown.status == "ok", grown
        names, _ = await box.offer("s6", agent(stdio_spec()))
        assert "calc__multiply" in names
        out = await box.run(ToolContext("s6", None), "calc__multiply", {"a": 6, "b": 7})
        assert out.content == "42"
    finally:
        await mcp.stop()


async def test_a_call_past_its_timeout_is_a_timeout_and_the_server_goes_on(
    service: SandboxService,
) -> None:
    mcp = McpClients(service)
    box = ToolBox([], mcp)
    try:
        await box.offer("s7", agent(stdio_spec(timeout_s=1)))
        slow = await box.run(ToolContext("s7", None), "calc__nap", {"seconds": 30})
        assert slow.status == "timeout" and "calc__nap" in slow.content, slow
        quick = await box.run(ToolContext("s7", None), "calc__add", {"a": 1, "b": 2})
        assert quick.status == "ok" and quick.content == "3"
    finally:
        await mcp.stop()


async def test_network_true_shares_the_hosts_network(service: SandboxService) -> None:
    import socket

    mcp = McpClients(service)
    box = ToolBox([], mcp)
    try:
        await box.offer("s8", agent(stdio_spec(network=True)))
        look = await box.run(ToolContext("s8", None), "calc__look_around", {"paths": []})
        host = sorted(name for _, name in socket.if_nameindex())
        assert look.detail["structured_content"]["interfaces"] == host
    finally:
        await mcp.stop()


async def test_a_path_that_is_a_symlink_into_etc_is_refused_at_start(
    service: SandboxService, tmp_path: Path
) -> None:
    link = tmp_path / "innocent"
    link.symlink_to("/etc")
    mcp = McpClients(service)
    try:
        with pytest.raises(McpServerError, match="/etc"):
            await mcp.connection("s9", stdio_spec(paths=[*stdio_spec().paths, str(link)]))
        state = Path("/tmp") / f"state-link-{tmp_path.name}"
        state.symlink_to(tmp_path / "sandboxes")  # the service's root: inside its state dir
        try:
            with pytest.raises(McpServerError, match="no MCP server is shown"):
                await mcp.connection("s9", stdio_spec(paths=[*stdio_spec().paths, str(state)]))
        finally:
            state.unlink()
    finally:
        await mcp.stop()
