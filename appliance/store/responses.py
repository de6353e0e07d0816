"""Links from OpenAI `/v1/responses` objects to the session transcript that holds them.

A stored response (`store: true`) is a range of messages `first_seq..last_seq` in one session:
the input items of the request and the output the model produced. `previous_response_id` in a new
request is resolved here to the session and the transcript up to that response's `last_seq`, which
is the whole context the new response continues from. `record_turn` appends the messages and
writes the link in one transaction, so a response id is never handed out for messages that were
not committed.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import apsw
import msgspec

from appliance.errors import InvalidRequest, NotFound
from appliance.store.db import Database
from appliance.store.messages import Message, MessageDraft
from appliance.store.messages import _append as append_messages
from appliance.store.records import Clock, new_id, scalar
from appliance.store.sessions import get_session


class ResponseLink(msgspec.Struct, kw_only=True):
    id: str
    """The response object's id (`resp_...`), as returned to the client."""
    session_id: str
    previous_response_id: str | None
    first_seq: int
    last_seq: int
    """The transcript up to this seq is the context a follow-up response continues from."""
    model: str | None
    created: float


_COLUMNS = "id, session_id, previous_response_id, first_seq, last_seq, model, created"


def _link(row: tuple[Any, ...]) -> ResponseLink:
    return ResponseLink(
        id=row[0],
        session_id=row[1],
        previous_response_id=row[2],
        first_seq=row[3],
        last_seq=row[4],
        model=row[5],
        created=row[6],
    )


def _get(con: apsw.Connection, response_id: str) -> ResponseLink:
    row = con.execute(f"SELECT {_COLUMNS} FROM responses WHERE id = ?", (response_id,)).fetchone()
    if row is None:
        raise NotFound(
            f"no stored response {response_id!r}; only responses created with store=true can be "
            "continued with previous_response_id",
            param="previous_response_id",
        )
    return _link(row)


def _record(
    con: apsw.Connection,
    session_id: str,
    first_seq: int,
    last_seq: int,
    previous_response_id: str | None,
    model: str | None,
    now: float,
    response_id: str | None = None,
) -> ResponseLink:
    get_session(con, session_id)
    count = scalar(
        con,
        "SELECT count(*) FROM messages WHERE session_id = ? AND seq BETWEEN ? AND ?",
        (session_id, first_seq, last_seq),
    )
    if first_seq < 1 or last_seq < first_seq or count != last_seq - first_seq + 1:
        raise InvalidRequest(
            f"session {session_id!r} has no messages {first_seq}..{last_seq} to link a response to"
        )
    if previous_response_id is not None:
        _get(con, previous_response_id)
    link = ResponseLink(
        id=response_id or new_id("resp"),
        session_id=session_id,
        previous_response_id=previous_response_id,
        first_seq=first_seq,
        last_seq=last_seq,
        model=model,
        created=now,
    )
    con.execute(
        f"INSERT INTO responses({_COLUMNS}) VALUES (?,?,?,?,?,?,?)",
        (link.id, session_id, previous_response_id, first_seq, last_seq, model, now),
    )
    con.execute(
        "UPDATE sessions SET last_response_id = ?, updated = ? WHERE id = ?",
        (link.id, now, session_id),
    )
    return link


class ResponseLinks:
    """The responses table. Safe to call from any thread except the event loop."""

    def __init__(self, db: Database, clock: Clock = time.time) -> None:
        self._db = db
        self._clock = clock

    def record(
        self,
        session_id: str,
        *,
        first_seq: int,
        last_seq: int,
        previous_response_id: str | None = None,
        model: str | None = None,
        response_id: str | None = None,
    ) -> ResponseLink:
        """Link a new response id (`response_id`, or a fresh one) to existing messages; committed
        when this returns.

        Also sets the session's `last_response_id`. InvalidRequest when the range is not in the
        session; NotFound when `previous_response_id` is unknown.
        """
        with self._db.transaction() as con:
            return _record(
                con,
                session_id,
                first_seq,
                last_seq,
                previous_response_id,
                model,
                self._clock(),
                response_id,
            )

    def record_turn(
        self,
        session_id: str,
        drafts: Sequence[MessageDraft],
        *,
        previous_response_id: str | None = None,
        model: str | None = None,
    ) -> tuple[list[Message], ResponseLink]:
        """Append the turn's messages and link a new response id to them, in one transaction."""
        if not drafts:
            raise InvalidRequest("a response needs at least one message", param="input")
        with self._db.transaction() as con:
            now = self._clock()
            messages = append_messages(con, session_id, drafts, now)
            link = _record(
                con,
                session_id,
                messages[0].seq,
                messages[-1].seq,
                previous_response_id,
                model,
                now,
            )
            return messages, link

    def get(self, response_id: str) -> ResponseLink:
        """The link of a stored response; NotFound (saying store=true is needed) otherwise."""
        return _get(self._db.connection(), response_id)
