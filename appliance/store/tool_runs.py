"""Tool runs: each tool call an agent made, with its arguments, result, status and duration.

A run is recorded `running` when the tool starts and finished with its outcome, so a crash in
between leaves a visible `running` row rather than nothing. The transcript holds what the model saw
(the tool message); a run holds what happened (timing, status), linked to the assistant message
that asked for the call.
"""

from __future__ import annotations

import time
from typing import Any, Literal

import apsw
import msgspec

from appliance.errors import InvalidRequest, NotFound
from appliance.store.db import Database
from appliance.store.records import Clock, from_json, new_id, to_json
from appliance.store.sessions import get_session

ToolRunStatus = Literal["running", "ok", "error", "timeout", "cancelled"]
FINAL_STATUSES: tuple[str, ...] = ("ok", "error", "timeout", "cancelled")


class ToolRun(msgspec.Struct, kw_only=True):
    id: str
    session_id: str
    message_id: str | None
    """The assistant message whose tool call this run executes."""
    call_id: str | None
    """The tool call's id in that message (what the tool message answers)."""
    tool: str
    arguments: dict[str, Any]
    result: str | None
    status: ToolRunStatus
    duration_ms: float | None
    created: float
    finished: float | None


_COLUMNS = (
    "id, session_id, message_id, call_id, tool, arguments, result, status, duration_ms, created,"
    " finished"
)


def _run(row: tuple[Any, ...]) -> ToolRun:
    return ToolRun(
        id=row[0],
        session_id=row[1],
        message_id=row[2],
        call_id=row[3],
        tool=row[4],
        arguments=from_json(row[5], dict[str, Any], {}),
        result=row[6],
        status=row[7],
        duration_ms=row[8],
        created=row[9],
        finished=row[10],
    )


def _get(con: apsw.Connection, run_id: str) -> ToolRun:
    row = con.execute(f"SELECT {_COLUMNS} FROM tool_runs WHERE id = ?", (run_id,)).fetchone()
    if row is None:
        raise NotFound(f"no tool run {run_id!r}", param="tool_run_id")
    return _run(row)


def _start(
    con: apsw.Connection,
    session_id: str,
    tool: str,
    arguments: dict[str, Any],
    message_id: str | None,
    call_id: str | None,
    now: float,
) -> ToolRun:
    get_session(con, session_id)
    if (
        message_id is not None
        and not con.execute(
            "SELECT 1 FROM messages WHERE id = ? AND session_id = ?", (message_id, session_id)
        ).fetchone()
    ):
        raise NotFound(f"session {session_id!r} has no message {message_id!r}", param="message_id")
    run = ToolRun(
        id=new_id("run"),
        session_id=session_id,
        message_id=message_id,
        call_id=call_id,
        tool=tool,
        arguments=arguments,
        result=None,
        status="running",
        duration_ms=None,
        created=now,
        finished=None,
    )
    con.execute(
        f"INSERT INTO tool_runs({_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
        (
            run.id,
            session_id,
            message_id,
            call_id,
            tool,
            to_json(arguments),
            None,
            "running",
            None,
            now,
            None,
        ),
    )
    return run


def _finish(
    con: apsw.Connection,
    run_id: str,
    status: ToolRunStatus,
    result: str | None,
    duration_ms: float | None,
    now: float,
) -> ToolRun:
    if status not in FINAL_STATUSES:
        raise InvalidRequest(
            f"a finished tool run has status {', '.join(FINAL_STATUSES)}, not {status!r}",
            param="status",
        )
    run = _get(con, run_id)
    if duration_ms is None:
        duration_ms = max(0.0, (now - run.created) * 1000.0)
    con.execute(
        "UPDATE tool_runs SET status = ?, result = ?, duration_ms = ?, finished = ? WHERE id = ?",
        (status, result, duration_ms, now, run_id),
    )
    return msgspec.structs.replace(
        run, status=status, result=result, duration_ms=duration_ms, finished=now
    )


class ToolRuns:
    """Tool runs of sessions. Safe to call from any thread except the event loop."""

    def __init__(self, db: Database, clock: Clock = time.time) -> None:
        self._db = db
        self._clock = clock

    def start(
        self,
        session_id: str,
        tool: str,
        arguments: dict[str, Any],
        *,
        message_id: str | None = None,
        call_id: str | None = None,
    ) -> ToolRun:
        """Record a run as `running`; committed when this returns."""
        with self._db.transaction() as con:
            return _start(con, session_id, tool, arguments, message_id, call_id, self._clock())

    def finish(
        self,
        run_id: str,
        status: ToolRunStatus,
        result: str | None,
        *,
        duration_ms: float | None = None,
    ) -> ToolRun:
        """Record the outcome (duration defaults to the time since start); committed on return."""
        with self._db.transaction() as con:
            return _finish(con, run_id, status, result, duration_ms, self._clock())

    def get(self, run_id: str) -> ToolRun:
        """One run; NotFound otherwise."""
        return _get(self._db.connection(), run_id)

    def for_session(self, session_id: str) -> list[ToolRun]:
        """The session's runs in the order they started."""
        rows = self._db.connection().execute(
            f"SELECT {_COLUMNS} FROM tool_runs WHERE session_id = ? ORDER BY created, id",
            (session_id,),
        )
        return [_run(r) for r in rows]
