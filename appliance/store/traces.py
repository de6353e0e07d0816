"""Stored traces: one per request or agent turn, with its spans (queue wait, wake-up, prefill...).

The telemetry layer builds a `Trace` in memory while a request runs and hands it here once, when
the request ends: one transaction writes the trace and all its spans. Span times are milliseconds
relative to the trace's start. Retention is a limit on the number of traces kept (and optionally
an age); spans go with their trace through `ON DELETE CASCADE`.
"""

from __future__ import annotations

import time
from typing import Any

import apsw
import msgspec

from appliance.errors import InvalidRequest, NotFound
from appliance.store.db import Database
from appliance.store.records import Clock, check_limit, from_json, new_id, to_json


class Span(msgspec.Struct, kw_only=True):
    id: str
    name: str
    start_ms: float
    """Milliseconds after the trace started."""
    duration_ms: float
    parent: str | None = None
    """The id of the enclosing span in the same trace; None for a top-level span."""
    attrs: dict[str, Any] = msgspec.field(default_factory=dict)


class Trace(msgspec.Struct, kw_only=True):
    id: str
    kind: str
    """What was traced: "chat", "completion", "embedding", "turn", "run"..."""
    name: str
    started: float
    """Unix seconds."""
    duration_ms: float
    status: str = "ok"
    attrs: dict[str, Any] = msgspec.field(default_factory=dict)
    model: str | None = None
    session_id: str | None = None
    agent: str | None = None
    spans: list[Span] = msgspec.field(default_factory=list)
    """Empty in listings; filled by `TraceLog.get`."""


def new_trace_id() -> str:
    """A fresh trace id (`trc_...`), sortable by creation time."""
    return new_id("trc")


_COLUMNS = "id, kind, name, status, started, duration_ms, attrs, model, session_id, agent"


def _trace(row: tuple[Any, ...]) -> Trace:
    return Trace(
        id=row[0],
        kind=row[1],
        name=row[2],
        status=row[3],
        started=row[4],
        duration_ms=row[5],
        attrs=from_json(row[6], dict[str, Any], {}),
        model=row[7],
        session_id=row[8],
        agent=row[9],
    )


def _insert(con: apsw.Connection, t: Trace) -> None:
    ids = [s.id for s in t.spans]
    if len(set(ids)) != len(ids):
        raise InvalidRequest(f"trace {t.id!r} has duplicate span ids")
    if con.execute("SELECT 1 FROM traces WHERE id = ?", (t.id,)).fetchone():
        raise InvalidRequest(f"trace {t.id!r} is already stored")
    con.execute(
        f"INSERT INTO traces({_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?)",
        (
            t.id,
            t.kind,
            t.name,
            t.status,
            t.started,
            t.duration_ms,
            to_json(t.attrs),
            t.model,
            t.session_id,
            t.agent,
        ),
    )
    con.executemany(
        "INSERT INTO spans(trace_id, id, parent, name, start_ms, duration_ms, attrs)"
        " VALUES (?,?,?,?,?,?,?)",
        [
            (t.id, s.id, s.parent, s.name, s.start_ms, s.duration_ms, to_json(s.attrs))
            for s in t.spans
        ],
    )


def _prune(con: apsw.Connection, keep: int, older_than: float | None) -> int:
    con.execute(
        "DELETE FROM traces WHERE id IN"
        " (SELECT id FROM traces ORDER BY started DESC, id DESC LIMIT -1 OFFSET ?)",
        (keep,),
    )
    deleted = con.changes()
    if older_than is not None:
        con.execute("DELETE FROM traces WHERE started < ?", (older_than,))
        deleted += con.changes()
    return deleted


class TraceLog:
    """The traces and spans tables. Safe to call from any thread except the event loop."""

    def __init__(self, db: Database, clock: Clock = time.time) -> None:
        self._db = db
        self._clock = clock

    def insert(self, trace: Trace) -> None:
        """Store a finished trace and its spans; committed when this returns.

        InvalidRequest when the id is already stored or span ids repeat.
        """
        with self._db.transaction() as con:
            _insert(con, trace)

    def get(self, trace_id: str) -> Trace:
        """One trace with its spans ordered by start; NotFound otherwise."""
        con = self._db.connection()
        row = con.execute(f"SELECT {_COLUMNS} FROM traces WHERE id = ?", (trace_id,)).fetchone()
        if row is None:
            raise NotFound(
                f"no trace {trace_id!r}; it may have been pruned by the retention limit",
                param="trace_id",
            )
        trace = _trace(row)
        trace.spans = [
            Span(
                id=r[0],
                parent=r[1],
                name=r[2],
                start_ms=r[3],
                duration_ms=r[4],
                attrs=from_json(r[5], dict[str, Any], {}),
            )
            for r in con.execute(
                "SELECT id, parent, name, start_ms, duration_ms, attrs FROM spans"
                " WHERE trace_id = ? ORDER BY start_ms, id",
                (trace_id,),
            )
        ]
        return trace

    def recent(
        self,
        *,
        limit: int = 50,
        kind: str | None = None,
        model: str | None = None,
        session_id: str | None = None,
        agent: str | None = None,
        status: str | None = None,
        since: float | None = None,
    ) -> list[Trace]:
        """The newest traces matching every given filter (without spans), newest first."""
        check_limit(limit)
        where: list[str] = []
        params: list[Any] = []
        for column, value in (
            ("kind", kind),
            ("model", model),
            ("session_id", session_id),
            ("agent", agent),
            ("status", status),
        ):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        if since is not None:
            where.append("started >= ?")
            params.append(since)
        clause = f" WHERE {' AND '.join(where)}" if where else ""
        rows = self._db.connection().execute(
            f"SELECT {_COLUMNS} FROM traces{clause} ORDER BY started DESC, id DESC LIMIT ?",
            (*params, limit),
        )
        return [_trace(r) for r in rows]

    def prune(self, *, keep: int, older_than: float | None = None) -> int:
        """Keep the newest `keep` traces (and none started before `older_than`); committed when
        this returns. Returns how many traces were deleted (their spans go with them)."""
        if keep < 0:
            raise InvalidRequest("keep cannot be negative", param="keep")
        with self._db.transaction() as con:
            return _prune(con, keep, older_than)
