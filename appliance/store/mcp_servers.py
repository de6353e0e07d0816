"""The MCP servers an agent may use: one entry of an agent's `mcp_servers`.

An entry is either a stdio server (`command` + `args` + `env`, run inside a sandbox) or a
Streamable HTTP server (`url` + `headers`). Everything here comes from API callers or profile
files, so it is checked strictly before it is stored: names that become part of tool names,
sizes, URL schemes, header and environment names, absolute paths. The checks say which entry and
which field is wrong.
"""

from __future__ import annotations

import posixpath
import re
from typing import Annotated
from urllib.parse import urlsplit

import msgspec
from msgspec import Meta

from appliance.errors import InvalidRequest

SERVER_NAME = r"^[a-z0-9][a-z0-9-]{0,23}$"
"""A server's name: it prefixes its tools' names (`<server>__<tool>`), so no '_' runs."""
TOOL_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
TOOL_NAME_LIMIT = 64
"""The longest function name the model is offered (OpenAI's limit)."""
MAX_SERVERS = 8
MAX_TIMEOUT_S = 600.0
_HEADER_NAME = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]{1,64}$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
HIDDEN_TREES = ("/etc", "/proc", "/sys", "/dev", "/run", "/boot", "/var/run")
"""Host trees no server is shown: the sandbox makes its own /etc, /proc and /dev."""
_RESERVED_ENV = frozenset({"PATH", "HOME", "TMPDIR", "USER", "LOGNAME"})

Arg = Annotated[str, Meta(max_length=4096)]


class McpServerSpec(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True, kw_only=True):
    """An MCP server whose tools an agent may call."""

    name: Annotated[str, Meta(pattern=SERVER_NAME)]
    """Short name (1-24 lowercase letters, digits, '-'); tools are offered as `<name>__<tool>`."""
    command: Annotated[str, Meta(max_length=4096)] | None = None
    """stdio: the program to run (an absolute path, or a name found on the daemon's PATH)."""
    args: Annotated[list[Arg], Meta(max_length=64)] = msgspec.field(default_factory=list)
    """stdio: the program's arguments."""
    env: Annotated[dict[str, Arg], Meta(max_length=64)] = msgspec.field(default_factory=dict)
    """stdio: environment variables set for the server (nothing else of the daemon's is)."""
    paths: Annotated[list[Arg], Meta(max_length=32)] = msgspec.field(default_factory=list)
    """stdio: absolute host files and directories the server reads (its script, its virtual
    environment); shown to it read-only, like the resolved command."""
    network: bool = False
    """stdio: whether the server's sandbox shares the host's network."""
    url: Annotated[str, Meta(max_length=2048)] | None = None
    """Streamable HTTP: the server's endpoint (http or https)."""
    headers: Annotated[dict[str, Arg], Meta(max_length=32)] = msgspec.field(default_factory=dict)
    """Streamable HTTP: headers sent with every request (e.g. Authorization)."""
    tools: Annotated[list[Annotated[str, Meta(pattern=TOOL_NAME)]], Meta(max_length=128)] | None = (
        None
    )
    """Only these of the server's tools are offered (unset: all of them)."""
    timeout_s: Annotated[float, Meta(gt=0.0, le=MAX_TIMEOUT_S)] = 60.0
    """How long one tool call may take, in seconds."""

    @property
    def transport(self) -> str:
        return "stdio" if self.command is not None else "http"


def _bad(i: int, field: str, why: str) -> InvalidRequest:
    return InvalidRequest(f"mcp_servers[{i}].{field}: {why}", param=f"mcp_servers[{i}].{field}")


def _no_nul(i: int, field: str, values: list[str]) -> None:
    if any("\x00" in v for v in values):
        raise _bad(i, field, "must not contain NUL characters")


def _check_stdio(i: int, s: McpServerSpec) -> None:
    assert s.command is not None
    if not s.command.strip():
        raise _bad(i, "command", "must not be empty")
    if s.headers:
        raise _bad(i, "headers", "is for HTTP servers (url); a stdio server takes env")
    _no_nul(i, "command", [s.command])
    _no_nul(i, "args", s.args)
    for key, value in s.env.items():
        if not _ENV_NAME.match(key):
            raise _bad(i, "env", f"{key!r} is not a variable name (letters, digits, '_')")
        if key in _RESERVED_ENV:
            raise _bad(i, "env", f"{key} is set by the sandbox and cannot be overridden")
        _no_nul(i, "env", [value])
    if "/" in s.command and not s.command.startswith("/"):
        raise _bad(i, "command", "give an absolute path or a program name found on PATH")
    for p in s.paths:
        if not p.startswith("/") or "\x00" in p:
            raise _bad(i, "paths", f"{p!r} is not an absolute path")
        norm = posixpath.normpath(p)
        if norm == "/" or any(norm == t or norm.startswith(t + "/") for t in HIDDEN_TREES):
            raise _bad(
                i,
                "paths",
                f"{p!r} is the host's own ({', '.join(HIDDEN_TREES)} stay hidden); name the "
                "server's files",
            )


def _check_http(i: int, s: McpServerSpec) -> None:
    assert s.url is not None
    if s.args or s.env or s.paths or s.network:
        raise _bad(
            i,
            "url",
            "an HTTP server takes headers only; args, env, paths and network are for stdio servers",
        )
    try:
        parts = urlsplit(s.url)
        host = parts.hostname
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError as exc:
        raise _bad(i, "url", f"is not a valid URL ({exc})") from None
    if parts.scheme not in ("http", "https") or not host:
        raise _bad(i, "url", "must be an http:// or https:// URL with a host")
    if parts.username or parts.password:
        raise _bad(i, "url", "must not carry credentials; send them in headers")
    if any(c in s.url for c in " \r\n\t\x00"):
        raise _bad(i, "url", "must not contain spaces or control characters")
    for key, value in s.headers.items():
        if not _HEADER_NAME.match(key):
            raise _bad(i, "headers", f"{key!r} is not a valid header name")
        if any(c in value for c in "\r\n\x00"):
            raise _bad(i, "headers", f"the value of {key} must not contain line breaks or NUL")


def validate_mcp_servers(servers: list[McpServerSpec]) -> None:
    """Raise InvalidRequest naming the entry and field when `servers` cannot be stored."""
    if len(servers) > MAX_SERVERS:
        raise InvalidRequest(
            f"at most {MAX_SERVERS} MCP servers per agent; {len(servers)} were given",
            param="mcp_servers",
        )
    seen: set[str] = set()
    for i, s in enumerate(servers):
        if s.name in seen:
            raise _bad(i, "name", f"{s.name!r} is used by two entries; server names are unique")
        seen.add(s.name)
        if (s.command is None) == (s.url is None):
            raise _bad(i, "command", "give either command (a stdio server) or url (an HTTP server)")
        if s.command is not None:
            _check_stdio(i, s)
        else:
            _check_http(i, s)
        if s.tools is not None:
            if len(set(s.tools)) != len(s.tools):
                raise _bad(i, "tools", "lists a tool twice")
            for t in s.tools:
                if len(tool_name(s.name, t)) > TOOL_NAME_LIMIT:
                    raise _bad(i, "tools", f"{s.name}__{t} is longer than {TOOL_NAME_LIMIT}")


def tool_name(server: str, tool: str) -> str:
    """The name the model calls a server's tool by."""
    return f"{server}__{tool}"
