"""Agents: a named persona, model, tool set, sandbox language and generation parameters.

An agent comes from one of two places, recorded in `source`: a profile file
(`profiles/agents/*.toml`, upserted at start-up by `appliance.store.agent_profiles`) or the HTTP
API. Names are unique and are what users type; ids are what sessions reference. Every public method
that writes opens one transaction and hands off to a private function taking the connection, so a
caller can never observe half a write.
"""

from __future__ import annotations

import logging
import re
import time
from typing import Annotated, Any, Literal

import apsw
import msgspec
from msgspec import UNSET, Meta, UnsetType

from appliance.errors import Conflict, InvalidRequest, NotFound
from appliance.sampling import MaxTokens, RepeatPenalty, Seed, StopList, TopK
from appliance.store.db import Database
from appliance.store.mcp_servers import McpServerSpec, validate_mcp_servers
from appliance.store.records import (
    Clock,
    Page,
    check_limit,
    from_json,
    new_id,
    page_of,
    scalar,
    to_json,
)
from appliance.store.sessions import SessionCleanup, delete_sessions_where

log = logging.getLogger("appliance.store")

AgentSource = Literal["profile", "api"]

AGENT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class GenerationParams(
    msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True, kw_only=True
):
    """Sampling parameters an agent applies to every model call; unset ones use the model's."""

    temperature: Annotated[float, Meta(ge=0.0, le=5.0)] | None = None
    """Sampling temperature; 0 is greedy (deterministic)."""
    top_p: Annotated[float, Meta(gt=0.0, le=1.0)] | None = None
    """Nucleus sampling: keep the smallest token set whose probability reaches top_p."""
    top_k: TopK | None = None
    """Keep only the k most likely tokens (0 disables)."""
    min_p: Annotated[float, Meta(ge=0.0, le=1.0)] | None = None
    """Drop tokens less likely than min_p times the most likely one."""
    repeat_penalty: RepeatPenalty | None = None
    """Penalty for repeating recent tokens (1.0 is none)."""
    presence_penalty: Annotated[float, Meta(ge=-2.0, le=2.0)] | None = None
    frequency_penalty: Annotated[float, Meta(ge=-2.0, le=2.0)] | None = None
    max_tokens: MaxTokens | None = None
    """Most tokens the model may generate per call (unset: the model profile's max_tokens)."""
    seed: Seed | None = None
    """Random seed for reproducible sampling (a signed 64-bit integer)."""
    stop: StopList | None = None
    """Strings that end generation (up to 4)."""


class AgentSpec(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """The writable fields of an agent (what a create request or a profile file gives)."""

    name: str
    """The agent's name, as users type it."""
    model: str
    """The id of the model the agent talks to (a model profile id or a scanned GGUF name)."""
    persona: str = ""
    """The system prompt that opens every session of this agent."""
    description: str = ""
    """One line shown in agent listings."""
    tools: list[str] = msgspec.field(default_factory=list)
    """Names of the tools the agent may call, e.g. "run_code"."""
    sandbox: str | None = None
    """The sandbox language profile `run_code` uses, e.g. "python"."""
    sandbox_image: str | None = None
    """An image (`appliance images list`) whose root filesystem `run_code`'s sandbox runs in,
    with `sandbox`'s interpreter looked up inside it; unset: the host's toolchains."""
    params: GenerationParams = msgspec.field(default_factory=GenerationParams)
    """Sampling parameters for every model call of this agent."""
    mcp_servers: list[McpServerSpec] = msgspec.field(default_factory=list)
    """MCP servers whose tools the agent may call, offered as `<server>__<tool>`."""


class AgentPatch(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """A partial update: only the fields that are set change."""

    name: str | UnsetType = UNSET
    model: str | UnsetType = UNSET
    persona: str | UnsetType = UNSET
    description: str | UnsetType = UNSET
    tools: list[str] | UnsetType = UNSET
    sandbox: str | UnsetType | None = UNSET
    sandbox_image: str | UnsetType | None = UNSET
    params: GenerationParams | UnsetType = UNSET
    mcp_servers: list[McpServerSpec] | UnsetType = UNSET


class Agent(msgspec.Struct, kw_only=True):
    id: str
    name: str
    model: str
    persona: str
    description: str
    tools: list[str]
    sandbox: str | None
    params: GenerationParams
    mcp_servers: list[McpServerSpec]
    source: AgentSource
    source_path: str | None
    """The profile file an agent came from (source "profile")."""
    created: float
    updated: float
    sandbox_image: str | None = None

    def spec(self) -> AgentSpec:
        return AgentSpec(
            name=self.name,
            model=self.model,
            persona=self.persona,
            description=self.description,
            tools=list(self.tools),
            sandbox=self.sandbox,
            sandbox_image=self.sandbox_image,
            params=self.params,
            mcp_servers=list(self.mcp_servers),
        )


_COLUMNS = (
    "id, name, model, persona, description, tools, sandbox, params, source, source_path, "
    "created, updated, mcp_servers, sandbox_image"
)


def _agent(row: tuple[Any, ...]) -> Agent:
    return Agent(
        id=row[0],
        name=row[1],
        model=row[2],
        persona=row[3],
        description=row[4],
        tools=from_json(row[5], list[str], []),
        sandbox=row[6],
        params=from_json(row[7], GenerationParams, GenerationParams()),
        source=row[8],
        source_path=row[9],
        created=row[10],
        updated=row[11],
        mcp_servers=from_json(row[12], list[McpServerSpec], []),
        sandbox_image=row[13],
    )


def validate_spec(spec: AgentSpec) -> None:
    """Raise InvalidRequest naming the field when a spec cannot be stored."""
    if not AGENT_NAME.match(spec.name) or spec.name.startswith("agt_"):
        raise InvalidRequest(
            f"agent name {spec.name!r} is not valid: use 1-64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit (and not 'agt_', which is kept for ids)",
            param="name",
        )
    if not spec.model.strip():
        raise InvalidRequest("an agent needs a model; set `model` to a model id", param="model")
    if len(set(spec.tools)) != len(spec.tools):
        raise InvalidRequest(f"tools are listed twice: {spec.tools}", param="tools")
    validate_mcp_servers(spec.mcp_servers)


def _find(con: apsw.Connection, ref: str) -> Agent | None:
    row = con.execute(
        f"SELECT {_COLUMNS} FROM agents WHERE id = ? OR name = ? ORDER BY id = ? DESC LIMIT 1",
        (ref, ref, ref),
    ).fetchone()
    return _agent(row) if row else None


def _get(con: apsw.Connection, ref: str) -> Agent:
    agent = _find(con, ref)
    if agent is None:
        raise NotFound(f"no agent {ref!r}; list agents with GET /api/agents", param="agent")
    return agent


def _insert(
    con: apsw.Connection, spec: AgentSpec, source: AgentSource, source_path: str | None, now: float
) -> Agent:
    validate_spec(spec)
    if con.execute("SELECT 1 FROM agents WHERE name = ?", (spec.name,)).fetchone():
        raise Conflict(
            f"an agent named {spec.name!r} exists; choose another name or update it", param="name"
        )
    agent = Agent(
        id=new_id("agt"),
        name=spec.name,
        model=spec.model,
        persona=spec.persona,
        description=spec.description,
        tools=list(spec.tools),
        sandbox=spec.sandbox,
        sandbox_image=spec.sandbox_image,
        params=spec.params,
        mcp_servers=list(spec.mcp_servers),
        source=source,
        source_path=source_path,
        created=now,
        updated=now,
    )
    _write(con, agent, insert=True)
    return agent


def _write(con: apsw.Connection, a: Agent, *, insert: bool) -> None:
    values = (
        a.name,
        a.model,
        a.persona,
        a.description,
        to_json(a.tools),
        a.sandbox,
        to_json(a.params),
        a.source,
        a.source_path,
        a.created,
        a.updated,
        to_json(a.mcp_servers),
        a.sandbox_image,
        a.id,
    )
    if insert:
        con.execute(
            "INSERT INTO agents(name, model, persona, description, tools, sandbox, params, source,"
            " source_path, created, updated, mcp_servers, sandbox_image, id)"
            " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            values,
        )
    else:
        con.execute(
            "UPDATE agents SET name=?, model=?, persona=?, description=?, tools=?, sandbox=?,"
            " params=?, source=?, source_path=?, created=?, updated=?, mcp_servers=?,"
            " sandbox_image=? WHERE id=?",
            values,
        )


def _update(con: apsw.Connection, ref: str, patch: AgentPatch, now: float) -> Agent:
    current = _get(con, ref)
    changes = {f: v for f in AgentPatch.__struct_fields__ if (v := getattr(patch, f)) is not UNSET}
    spec = msgspec.structs.replace(current.spec(), **changes)
    validate_spec(spec)
    if (
        spec.name != current.name
        and con.execute("SELECT 1 FROM agents WHERE name = ?", (spec.name,)).fetchone()
    ):
        raise Conflict(f"an agent named {spec.name!r} exists; choose another name", param="name")
    agent = Agent(
        id=current.id,
        source=current.source,
        source_path=current.source_path,
        created=current.created,
        updated=now,
        **msgspec.structs.asdict(spec),
    )
    _write(con, agent, insert=False)
    return agent


def _delete(con: apsw.Connection, ref: str, with_sessions: bool) -> SessionCleanup:
    agent = _get(con, ref)
    n = scalar(con, "SELECT count(*) FROM sessions WHERE agent_id = ?", (agent.id,))
    if n and not with_sessions:
        raise Conflict(
            f"agent {agent.name!r} has {n} session(s); delete them first or delete the agent "
            "together with its sessions",
            param="agent",
        )
    cleanup = delete_sessions_where(con, "agent_id = ?", (agent.id,))
    con.execute("DELETE FROM agents WHERE id = ?", (agent.id,))
    return cleanup


def _upsert_profile(con: apsw.Connection, spec: AgentSpec, path: str, now: float) -> Agent:
    current = _find(con, spec.name)
    if current is None:
        return _insert(con, spec, "profile", path, now)
    if current.source == "api":
        log.warning(
            "agent %r was created through the API; the profile %s with the same name is ignored",
            spec.name,
            path,
        )
        return current
    validate_spec(spec)
    if current.spec() == spec and current.source_path == path:
        return current
    agent = Agent(
        id=current.id,
        source="profile",
        source_path=path,
        created=current.created,
        updated=now,
        **msgspec.structs.asdict(spec),
    )
    _write(con, agent, insert=False)
    return agent


class Agents:
    """The agents table. Safe to call from any thread except the event loop."""

    def __init__(self, db: Database, clock: Clock = time.time) -> None:
        self._db = db
        self._clock = clock

    def create(self, spec: AgentSpec) -> Agent:
        """Store a new API agent; committed when this returns. Conflict if the name is taken."""
        with self._db.transaction() as con:
            return _insert(con, spec, "api", None, self._clock())

    def get(self, ref: str) -> Agent:
        """The agent with this id or name; NotFound otherwise."""
        return _get(self._db.connection(), ref)

    def find(self, ref: str) -> Agent | None:
        """The agent with this id or name, or None."""
        return _find(self._db.connection(), ref)

    def list(self, *, limit: int = 100, after: str | None = None) -> Page[Agent]:
        """Agents ordered by name; `after` is the last name of the previous page."""
        check_limit(limit)
        rows = self._db.connection().execute(
            f"SELECT {_COLUMNS} FROM agents WHERE name > ? ORDER BY name LIMIT ?",
            (after or "", limit + 1),
        )
        return page_of([_agent(r) for r in rows], limit, lambda a: a.name)

    def update(self, ref: str, patch: AgentPatch) -> Agent:
        """Apply the set fields of `patch`; committed when this returns.

        A profile agent may be edited, but its file is applied again at the next start-up.
        """
        with self._db.transaction() as con:
            return _update(con, ref, patch, self._clock())

    def delete(self, ref: str, *, with_sessions: bool = False) -> SessionCleanup:
        """Delete an agent; committed when this returns.

        Conflict when it still has sessions, unless `with_sessions` is true: then its sessions go
        too, and the returned cleanup lists the KV files and sandboxes the caller must remove.
        """
        with self._db.transaction() as con:
            return _delete(con, ref, with_sessions)

    def upsert_profile(self, spec: AgentSpec, source_path: str) -> Agent:
        """Create or refresh the agent defined by a profile file; committed when this returns.

        An agent of the same name created through the API wins: it is returned unchanged and a
        warning is logged. `updated` changes only when the profile's content changed.
        """
        with self._db.transaction() as con:
            return _upsert_profile(con, spec, source_path, self._clock())
