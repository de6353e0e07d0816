"""Sessions: one conversation with an agent (or a bare model), its lifecycle, forks and deletion.

A session moves `created -> active -> parked -> active ...` (active: its KV cache is hot in a model
worker; parked: its KV state is on disk, indexed in `kv_entries`). Its transcript lives in
`appliance.store.messages`. Deleting a session deletes every row that belongs to it through
`ON DELETE CASCADE`; the files it owns (parked KV state) and its sandbox live outside the database,
so the delete returns a `SessionCleanup` naming them and the caller removes them after the commit.
A fork is an independent copy of the transcript up to a message, remembering where it came from.
"""

from __future__ import annotations

import time
from typing import Any, Literal

import apsw
import msgspec
from msgspec import UNSET, UnsetType

from appliance.errors import InvalidRequest, NotFound
from appliance.store.db import Database
from appliance.store.records import Clock, Page, check_limit, new_id, page_of, scalar

SessionStatus = Literal["created", "active", "parked"]
SESSION_STATUSES: tuple[str, ...] = ("created", "active", "parked")


class Session(msgspec.Struct, kw_only=True):
    id: str
    agent_id: str | None
    """The agent whose persona, tools and parameters apply; None for a bare-model session."""
    title: str
    model: str | None
    """The model this session uses, overriding the agent's when set."""
    status: SessionStatus
    parent_id: str | None
    """The session this one was forked from (None when not a fork, or the parent was deleted)."""
    forked_at_message: str | None
    """The id of the parent's message the fork copied up to (inclusive)."""
    last_response_id: str | None
    """The newest /v1/responses object of this session, if any."""
    sandbox_id: str | None
    """The stateful sandbox the session owns, if one was created."""
    created: float
    updated: float
    message_count: int = 0


class SessionCleanup(msgspec.Struct, kw_only=True):
    """What a delete removed from the database and what the caller must remove from disk."""

    session_ids: list[str] = msgspec.field(default_factory=list)
    kv_paths: list[str] = msgspec.field(default_factory=list)
    """Parked KV state files of the deleted sessions; delete them."""
    sandbox_ids: list[str] = msgspec.field(default_factory=list)
    """Sandboxes (and their workspaces) the deleted sessions owned; destroy them."""


_COLUMNS = (
    "id, agent_id, title, model, status, parent_id, forked_at_message, last_response_id, "
    "sandbox_id, created, updated, "
    "(SELECT count(*) FROM messages m WHERE m.session_id = sessions.id)"
)


def _session(row: tuple[Any, ...]) -> Session:
    return Session(
        id=row[0],
        agent_id=row[1],
        title=row[2],
        model=row[3],
        status=row[4],
        parent_id=row[5],
        forked_at_message=row[6],
        last_response_id=row[7],
        sandbox_id=row[8],
        created=row[9],
        updated=row[10],
        message_count=row[11],
    )


def get_session(con: apsw.Connection, session_id: str) -> Session:
    """The session row, or NotFound with a hint."""
    row = con.execute(f"SELECT {_COLUMNS} FROM sessions WHERE id = ?", (session_id,)).fetchone()
    if row is None:
        raise NotFound(
            f"no session {session_id!r}; list sessions with GET /api/sessions", param="session_id"
        )
    return _session(row)


def _resolve_agent(con: apsw.Connection, ref: str) -> str:
    row = con.execute(
        "SELECT id FROM agents WHERE id = ? OR name = ? ORDER BY id = ? DESC LIMIT 1",
        (ref, ref, ref),
    ).fetchone()
    if row is None:
        raise NotFound(f"no agent {ref!r}; list agents with GET /api/agents", param="agent")
    return str(row[0])


def _insert(con: apsw.Connection, s: Session) -> None:
    con.execute(
        "INSERT INTO sessions(id, agent_id, title, model, status, parent_id, forked_at_message,"
        " last_response_id, sandbox_id, created, updated) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
        (
            s.id,
            s.agent_id,
            s.title,
            s.model,
            s.status,
            s.parent_id,
            s.forked_at_message,
            s.last_response_id,
            s.sandbox_id,
            s.created,
            s.updated,
        ),
    )


def _create(
    con: apsw.Connection, agent: str | None, title: str, model: str | None, now: float
) -> Session:
    agent_id = _resolve_agent(con, agent) if agent is not None else None
    if agent_id is None and not model:
        raise InvalidRequest("a session needs an agent or a model; give one of them", param="agent")
    s = Session(
        id=new_id("ses"),
        agent_id=agent_id,
        title=title,
        model=model,
        status="created",
        parent_id=None,
        forked_at_message=None,
        last_response_id=None,
        sandbox_id=None,
        created=now,
        updated=now,
    )
    _insert(con, s)
    return s


def _update(con: apsw.Connection, session_id: str, changes: dict[str, Any], now: float) -> Session:
    get_session(con, session_id)
    status = changes.get("status")
    if status is not None and status not in SESSION_STATUSES:
        raise InvalidRequest(
            f"session status must be one of {', '.join(SESSION_STATUSES)}, got {status!r}",
            param="status",
        )
    if changes:
        sets = ", ".join(f"{k} = ?" for k in changes)
        con.execute(
            f"UPDATE sessions SET {sets}, updated = ? WHERE id = ?",
            (*changes.values(), now, session_id),
        )
    return get_session(con, session_id)


def delete_sessions_where(
    con: apsw.Connection, where: str, params: tuple[Any, ...]
) -> SessionCleanup:
    """Delete the sessions matching `where` (cascading to their rows) and say what to clean up.

    Call inside a transaction; `where` is a trusted SQL fragment over the sessions table.
    """
    selected = f"SELECT id FROM sessions WHERE {where}"
    cleanup = SessionCleanup(
        session_ids=[r[0] for r in con.execute(selected, params)],
        kv_paths=[
            r[0]
            for r in con.execute(
                f"SELECT path FROM kv_entries WHERE session_id IN ({selected}) ORDER BY path",
                params,
            )
        ],
        sandbox_ids=[
            r[0]
            for r in con.execute(
                f"SELECT sandbox_id FROM sessions WHERE ({where}) AND sandbox_id IS NOT NULL",
                params,
            )
        ],
    )
    con.execute(f"DELETE FROM sessions WHERE {where}", params)
    return cleanup


def _fork(
    con: apsw.Connection, session_id: str, at_message: str | None, title: str | None, now: float
) -> Session:
    parent = get_session(con, session_id)
    if at_message is None:
        upto = scalar(
            con, "SELECT coalesce(max(seq), 0) FROM messages WHERE session_id = ?", (session_id,)
        )
        last = con.execute(
            "SELECT id FROM messages WHERE session_id = ? AND seq = ?", (session_id, upto)
        ).fetchone()
        at_message = last[0] if last else None
    else:
        row = con.execute(
            "SELECT seq FROM messages WHERE id = ? AND session_id = ?", (at_message, session_id)
        ).fetchone()
        if row is None:
            raise NotFound(
                f"session {session_id!r} has no message {at_message!r}; fork at one of the ids "
                "in its transcript",
                param="at_message",
            )
        upto = row[0]
    child = Session(
        id=new_id("ses"),
        agent_id=parent.agent_id,
        title=title if title is not None else (f"{parent.title} (fork)" if parent.title else ""),
        model=parent.model,
        status="created",
        parent_id=parent.id,
        forked_at_message=at_message,
        last_response_id=None,
        sandbox_id=None,
        created=now,
        updated=now,
    )
    _insert(con, child)
    new_ids: dict[str, str] = {}
    rows = list(
        con.execute(
            "SELECT id, seq, role, content, tool_calls, tool_call_id, name, created, tokens, meta"
            " FROM messages WHERE session_id = ? AND seq <= ? ORDER BY seq",
            (session_id, upto),
        )
    )
    for row in rows:
        new_ids[row[0]] = new_id("msg")
        con.execute(
            "INSERT INTO messages(id, session_id, seq, role, content, tool_calls, tool_call_id,"
            " name, created, tokens, meta) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
            (new_ids[row[0]], child.id, *row[1:]),
        )
    runs = list(
        con.execute(
            "SELECT message_id, call_id, tool, arguments, result, status, duration_ms, created,"
            " finished FROM tool_runs WHERE session_id = ? AND message_id IN"
            " (SELECT id FROM messages WHERE session_id = ? AND seq <= ?) ORDER BY id",
            (session_id, session_id, upto),
        )
    )
    for run in runs:
        con.execute(
            "INSERT INTO tool_runs(id, session_id, message_id, call_id, tool, arguments, result,"
            " status, duration_ms, created, finished) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
            (new_id("run"), child.id, new_ids[run[0]], *run[1:]),
        )
    return get_session(con, child.id)


class Sessions:
    """The sessions table. Safe to call from any thread except the event loop."""

    def __init__(self, db: Database, clock: Clock = time.time) -> None:
        self._db = db
        self._clock = clock

    def create(self, agent: str | None, *, title: str = "", model: str | None = None) -> Session:
        """Open a new session for the agent (id or name) or a bare model; committed on return.

        NotFound when the agent does not exist; InvalidRequest when neither is given.
        """
        with self._db.transaction() as con:
            return _create(con, agent, title, model, self._clock())

    def get(self, session_id: str) -> Session:
        """The session; NotFound otherwise."""
        return get_session(self._db.connection(), session_id)

    def list(
        self,
        *,
        agent: str | None = None,
        status: SessionStatus | None = None,
        limit: int = 50,
        after: str | None = None,
    ) -> Page[Session]:
        """Sessions, newest first, optionally of one agent (id or name) and/or one status.

        `after` is the `next_after` of the previous page.
        """
        check_limit(limit)
        con = self._db.connection()
        where: list[str] = ["1"]
        params: list[Any] = []
        if agent is not None:
            where.append("agent_id = ?")
            params.append(_resolve_agent(con, agent))
        if status is not None:
            where.append("status = ?")
            params.append(status)
        if after is not None:
            where.append("id < ?")
            params.append(after)
        rows = con.execute(
            f"SELECT {_COLUMNS} FROM sessions WHERE {' AND '.join(where)} ORDER BY id DESC LIMIT ?",
            (*params, limit + 1),
        )
        return page_of([_session(r) for r in rows], limit, lambda s: s.id)

    def update(
        self,
        session_id: str,
        *,
        title: str | UnsetType = UNSET,
        model: str | UnsetType | None = UNSET,
        last_response_id: str | UnsetType | None = UNSET,
        sandbox_id: str | UnsetType | None = UNSET,
    ) -> Session:
        """Change the given fields (and `updated`); committed when this returns. The status has
        its own call, `set_status`."""
        changes = {
            k: v
            for k, v in (
                ("title", title),
                ("model", model),
                ("last_response_id", last_response_id),
                ("sandbox_id", sandbox_id),
            )
            if v is not UNSET
        }
        with self._db.transaction() as con:
            return _update(con, session_id, changes, self._clock())

    def set_status(self, session_id: str, status: SessionStatus) -> Session:
        """Record where the session's KV cache is (created, active: hot in a worker, parked: on
        disk); committed when this returns. Only the KV parking (appliance.sessions.parking)
        calls this: it is the one owner of that lifecycle (tests/unit/test_session_status_owner)."""
        with self._db.transaction() as con:
            return _update(con, session_id, {"status": status}, self._clock())

    def delete(self, session_id: str) -> SessionCleanup:
        """Delete the session and all its rows; committed when this returns.

        The returned cleanup names the KV files and the sandbox to remove (after the commit, so a
        crash in between leaves orphan files, never rows pointing at missing files).
        NotFound when there is no such session. Forks of it survive with `parent_id` cleared.
        """
        with self._db.transaction() as con:
            get_session(con, session_id)
            return delete_sessions_where(con, "id = ?", (session_id,))

    def fork(
        self, session_id: str, *, at_message: str | None = None, title: str | None = None
    ) -> Session:
        """A new session holding a copy of the transcript up to `at_message` (inclusive; None
        copies all), with the tool runs of the copied messages; committed when this returns.

        The fork has new message ids, the same agent and model, no sandbox and no parked state.
        """
        with self._db.transaction() as con:
            return _fork(con, session_id, at_message, title, self._clock())
