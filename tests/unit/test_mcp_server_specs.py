"""An agent's `mcp_servers`: good entries load from a profile; hostile ones are refused by field."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from appliance.errors import ConfigError, InvalidRequest
from appliance.store import AgentSpec
from appliance.store.agent_profiles import load_agent_profile
from appliance.store.mcp_servers import McpServerSpec, validate_mcp_servers


def spec(**kw: object) -> McpServerSpec:
    return msgspec.convert({"name": "calc", **kw}, McpServerSpec)


def test_profile_with_a_stdio_and_an_http_server_loads(tmp_path: Path) -> None:
    path = tmp_path / "bot.toml"
    path.write_text(
        'model = "m"\n'
        "[[mcp_servers]]\n"
        'name = "calc"\ncommand = "/usr/bin/python3"\nargs = ["/srv/calc.py"]\n'
        'paths = ["/srv/calc.py"]\ntools = ["add"]\ntimeout_s = 5\n'
        "[[mcp_servers]]\n"
        'name = "remote"\nurl = "http://127.0.0.1:9/mcp"\nheaders = { Authorization = "Bearer x" }\n'
    )
    profile = load_agent_profile(path)
    calc, remote = profile.mcp_servers
    assert calc.transport == "stdio" and calc.tools == ["add"] and not calc.network
    assert remote.transport == "http" and remote.headers == {"Authorization": "Bearer x"}


@pytest.mark.parametrize(
    ("entry", "field"),
    [
        ({}, "command"),
        ({"command": "python3", "url": "http://h/mcp"}, "command"),
        ({"command": "bin/python"}, "command"),
        ({"command": "python3", "args": ["a\x00b"]}, "args"),
        ({"command": "python3", "env": {"PATH": "/evil"}}, "env"),
        ({"command": "python3", "env": {"A B": "x"}}, "env"),
        ({"command": "python3", "paths": ["relative/file"]}, "paths"),
        ({"command": "python3", "paths": ["/"]}, "paths"),
        ({"command": "python3", "paths": ["/etc/shadow"]}, "paths"),
        ({"command": "python3", "paths": ["/proc/1/root"]}, "paths"),
        ({"command": "python3", "headers": {"X": "y"}}, "headers"),
        ({"url": "file:///etc/passwd"}, "url"),
        ({"url": "http://user:pw@host/mcp"}, "url"),
        ({"url": "http://host:99999/mcp"}, "url"),
        ({"url": "http://host/mcp", "headers": {"X": "a\r\nInjected: 1"}}, "headers"),
        ({"url": "http://host/mcp", "headers": {"Bad Name": "v"}}, "headers"),
        ({"url": "http://host/mcp", "network": True}, "url"),
        ({"command": "python3", "tools": ["add", "add"]}, "tools"),
    ],
)
def test_hostile_entries_are_refused_naming_the_field(entry: dict[str, object], field: str) -> None:
    with pytest.raises(InvalidRequest) as err:
        validate_mcp_servers([spec(**entry)])
    assert err.value.param == f"mcp_servers[0].{field}"


@pytest.mark.parametrize(
    "entry",
    [
        {"name": "Bad_Name", "command": "x"},
        {"name": "a__b", "command": "x"},
        {"name": "x" * 25, "command": "x"},
        {"name": "calc", "command": "x", "timeout_s": 0},
        {"name": "calc", "command": "x", "timeout_s": 10_000},
        {"name": "calc", "command": "x", "args": ["a"] * 65},
        {"name": "calc", "url": "http://h/" + "a" * 3000},
        {"name": "calc", "command": "x", "tools": ["not a name"]},
        {"name": "calc", "command": "x", "shell": True},
    ],
)
def test_shape_errors_are_decode_errors(entry: dict[str, object]) -> None:
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert(entry, McpServerSpec)


def test_duplicate_names_and_too_many_servers() -> None:
    with pytest.raises(InvalidRequest, match="unique"):
        validate_mcp_servers([spec(command="a"), spec(command="b")])
    many = [msgspec.convert({"name": f"s{i}", "command": "x"}, McpServerSpec) for i in range(9)]
    with pytest.raises(InvalidRequest, match="at most"):
        validate_mcp_servers(many)


def test_profile_error_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "bot.toml"
    path.write_text('model = "m"\n[[mcp_servers]]\nname = "calc"\nurl = "ftp://h/x"\n')
    with pytest.raises(ConfigError) as err:
        load_agent_profile(path)
    assert err.value.file == str(path) and "url" in str(err.value)
    assert AgentSpec(name="a", model="m").mcp_servers == []
