"""`appliance mcp serve --stdio`, launched by the official SDK's stdio client: the daemon's own
tools, resources and prompts over stdin/stdout, relayed to a live daemon with its token.

A small daemon (no models: the tools here need only sandboxes and the store) with an API token.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
from mcp import Client, StdioServerParameters
from mcp.types import TextContent

from tests.conftest import require
from tests.integration.daemon import REPO, Daemon, running_daemon
from tests.integration.test_mcp_server import TOOLS, create_token, error_text, structured


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    root = tmp_path_factory.mktemp("mcp-stdio")
    token = create_token(root / "state")
    with running_daemon(root) as d:
        d.headers = {"Authorization": f"Bearer {token}"}
        yield d


def relay(daemon: Daemon, token: str | None) -> StdioServerParameters:
    args = ["-m", "appliance", "mcp", "serve", "--stdio", "--url", daemon.url]
    env = {k: v for k, v in os.environ.items() if k != "APPLIANCE_TOKEN"}
    return StdioServerParameters(
        command=sys.executable,
        args=[*args, "--token", token] if token else args,
        env=env,
        cwd=str(REPO),
    )


def token_of(daemon: Daemon) -> str:
    return daemon.headers["Authorization"].removeprefix("Bearer ")


async def test_the_stdio_server_relays_the_same_tools_resources_and_prompts(
    daemon: Daemon,
) -> None:
    with daemon.http() as h:
        sandboxes = bool(h.get("/api/status").json()["sandboxes"]["available"])
    async with Client(relay(daemon, token_of(daemon))) as c:
        assert c.server_info is not None and c.server_info.name == "appliance"
        tools = {t.name: t for t in (await c.list_tools()).tools}
        assert set(tools) == TOOLS
        assert tools["run_code"].output_schema is not None
        assert {"assistant", "coder"} <= {p.name for p in (await c.list_prompts()).prompts}
        persona = (await c.get_prompt("assistant")).messages[0].content
        assert isinstance(persona, TextContent) and persona.text

        bad = error_text(await c.call_tool("sandbox_exec", {"sandbox_id": "sb_x", "code": "1"}))
        assert "sb_x" in bad
        require(sandboxes, "bwrap sandboxes are not available here")
        out = structured(
            await c.call_tool("run_code", {"language": "bash", "code": "echo $((6*7))"})
        )
        assert out["stdout"].strip() == "42"
        sb = structured(await c.call_tool("sandbox_create", {"language": "bash"}))
        structured(
            await c.call_tool(
                "sandbox_write_file", {"sandbox_id": sb["id"], "path": "f", "text": "x"}
            )
        )
        uri = f"appliance://sandboxes/{sb['id']}/files/f"
        assert uri in {str(r.uri) for r in (await c.list_resources()).resources}
    # the relay's session with the daemon ended with it: so did its sandbox
    deadline = time.monotonic() + 10
    with daemon.http() as h:
        while h.get(f"/api/sandboxes/{sb['id']}").status_code != 404:
            assert time.monotonic() < deadline, "the relay's sandbox outlived it"
            time.sleep(0.1)


def test_a_wrong_token_is_one_clear_line_not_a_broken_pipe(daemon: Daemon) -> None:
    params = relay(daemon, "apl_wrong")
    done = subprocess.run(
        [params.command, *params.args],
        env=params.env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 1 and done.stdout == ""
    assert re.search(r"error: 401: .*token", done.stderr), done.stderr
