"""The transcript of a session: an append-only sequence of OpenAI-style chat messages.

Each message has a per-session `seq` (1, 2, 3...) assigned inside the write transaction, so two
writers never get the same position and the order in the database is the order of the
conversation. A message is acknowledged to a client only after `append`/`append_many` returned,
which is after the commit (synchronous=FULL): a crash afterwards cannot lose it.

`meta` carries what the appliance itself notes about a message, e.g. `{"context_dropped": 12}` on
a marker telling the reader that the 12 oldest turns no longer fit the model's context.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, Literal

import apsw
import msgspec

from appliance.errors import InvalidRequest, NotFound
from appliance.store.db import Database
from appliance.store.records import Clock, from_json, new_id, scalar, to_json
from appliance.store.sessions import get_session

Role = Literal["system", "user", "assistant", "tool"]
ROLES: tuple[str, ...] = ("system", "user", "assistant", "tool")


class MessageDraft(msgspec.Struct, kw_only=True):
    """A message to append; the store adds id, session, seq and time."""

    role: Role
    content: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    """OpenAI tool calls of an assistant message: [{id, type: "function", function: {...}}]."""
    tool_call_id: str | None = None
    """For role "tool": the id of the call this message answers."""
    name: str | None = None
    tokens: int | None = None
    """Tokens this message takes in the prompt, when known."""
    meta: dict[str, Any] = msgspec.field(default_factory=dict)
    id: str | None = None
    """The message's id when the caller already showed it to a client (a streamed answer); the
    store makes one when None."""


class Message(msgspec.Struct, kw_only=True):
    id: str
    session_id: str
    seq: int
    role: Role
    content: str | None
    tool_calls: list[dict[str, Any]] | None
    tool_call_id: str | None
    name: str | None
    created: float
    tokens: int | None
    meta: dict[str, Any]


_LAST_SEQ = "SELECT coalesce(max(seq), 0) FROM messages WHERE session_id = ?"
_COLUMNS = (
    "id, session_id, seq, role, content, tool_calls, tool_call_id, name, created, tokens, meta"
)


def _message(row: tuple[Any, ...]) -> Message:
    return Message(
        id=row[0],
        session_id=row[1],
        seq=row[2],
        role=row[3],
        content=row[4],
        tool_calls=None if row[5] is None else from_json(row[5], list[dict[str, Any]], []),
        tool_call_id=row[6],
        name=row[7],
        created=row[8],
        tokens=row[9],
        meta=from_json(row[10], dict[str, Any], {}),
    )


def _validate(d: MessageDraft) -> None:
    if d.role not in ROLES:
        raise InvalidRequest(
            f"message role must be one of {', '.join(ROLES)}, got {d.role!r}", param="role"
        )
    if d.role == "tool" and not d.tool_call_id:
        raise InvalidRequest(
            "a tool message needs tool_call_id: the id of the call it answers",
            param="tool_call_id",
        )
    if d.role in ("system", "user") and d.content is None:
        raise InvalidRequest(f"a {d.role} message needs content", param="content")
    if d.role == "assistant" and d.content is None and not d.tool_calls:
        raise InvalidRequest("an assistant message needs content or tool_calls", param="content")


def _append(
    con: apsw.Connection, session_id: str, drafts: Sequence[MessageDraft], now: float
) -> list[Message]:
    get_session(con, session_id)
    for d in drafts:
        _validate(d)
    seq = int(scalar(con, _LAST_SEQ, (session_id,)))
    out: list[Message] = []
    for d in drafts:
        seq += 1
        m = Message(
            id=d.id or new_id("msg"),
            session_id=session_id,
            seq=seq,
            role=d.role,
            content=d.content,
            tool_calls=d.tool_calls,
            tool_call_id=d.tool_call_id,
            name=d.name,
            created=now,
            tokens=d.tokens,
            meta=dict(d.meta),
        )
        con.execute(
            f"INSERT INTO messages({_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
            (
                m.id,
                m.session_id,
                m.seq,
                m.role,
                m.content,
                None if m.tool_calls is None else to_json(m.tool_calls),
                m.tool_call_id,
                m.name,
                m.created,
                m.tokens,
                to_json(m.meta),
            ),
        )
        out.append(m)
    con.execute("UPDATE sessions SET updated = ? WHERE id = ?", (now, session_id))
    return out


def _get(con: apsw.Connection, message_id: str) -> Message:
    row = con.execute(f"SELECT {_COLUMNS} FROM messages WHERE id = ?", (message_id,)).fetchone()
    if row is None:
        raise NotFound(f"no message {message_id!r}", param="message_id")
    return _message(row)


def _update_meta(con: apsw.Connection, message_id: str, meta: dict[str, Any]) -> Message:
    m = _get(con, message_id)
    merged = {**m.meta, **meta}
    con.execute("UPDATE messages SET meta = ? WHERE id = ?", (to_json(merged), message_id))
    return msgspec.structs.replace(m, meta=merged)


class Messages:
    """Session transcripts. Safe to call from any thread except the event loop."""

    def __init__(self, db: Database, clock: Clock = time.time) -> None:
        self._db = db
        self._clock = clock

    def append(
        self,
        session_id: str,
        role: Role,
        content: str | None = None,
        *,
        tool_calls: list[dict[str, Any]] | None = None,
        tool_call_id: str | None = None,
        name: str | None = None,
        tokens: int | None = None,
        meta: dict[str, Any] | None = None,
    ) -> Message:
        """Append one message at the end of the transcript; committed (durably) on return."""
        draft = MessageDraft(
            role=role,
            content=content,
            tool_calls=tool_calls,
            tool_call_id=tool_call_id,
            name=name,
            tokens=tokens,
            meta=meta or {},
        )
        return self.append_many(session_id, [draft])[0]

    def append_many(self, session_id: str, drafts: Sequence[MessageDraft]) -> list[Message]:
        """Append several messages in one transaction, in order: all are committed or none."""
        with self._db.transaction() as con:
            return _append(con, session_id, drafts, self._clock())

    def get(self, message_id: str) -> Message:
        """One message by id; NotFound otherwise."""
        return _get(self._db.connection(), message_id)

    def transcript(
        self,
        session_id: str,
        *,
        after_seq: int = 0,
        upto_seq: int | None = None,
        limit: int | None = None,
    ) -> list[Message]:
        """Messages with after_seq < seq <= upto_seq, in order (at most `limit`).

        NotFound when the session does not exist (an empty session gives []).
        """
        con = self._db.connection()
        get_session(con, session_id)
        rows = con.execute(
            f"SELECT {_COLUMNS} FROM messages WHERE session_id = ? AND seq > ? AND seq <= ?"
            " ORDER BY seq LIMIT ?",
            (
                session_id,
                after_seq,
                upto_seq if upto_seq is not None else 2**62,
                limit if limit is not None else -1,
            ),
        )
        return [_message(r) for r in rows]

    def last_seq(self, session_id: str) -> int:
        """The seq of the newest message of the session, 0 when it has none."""
        return int(scalar(self._db.connection(), _LAST_SEQ, (session_id,)))

    def update_meta(self, message_id: str, meta: dict[str, Any]) -> Message:
        """Merge `meta` into the message's meta (content never changes); committed on return."""
        with self._db.transaction() as con:
            return _update_meta(con, message_id, meta)
