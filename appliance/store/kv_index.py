"""The index of parked KV state: which file holds which session's cache, for which model.

A parked entry is keyed by session and model fingerprint (one parked state per session and model
file; parking again replaces it) and carries the hash of the token prefix it covers, so a restore
can prove the state matches the prompt before using it. The files themselves are written and read
by the model runtime; this index only knows their paths and sizes, which is enough to enforce the
disk budget: `evict_over_budget` picks the least recently used entries until the rest (plus the
state about to be written) fits, deletes their rows, and returns them so the caller deletes files.
"""

from __future__ import annotations

import time
from typing import Any

import apsw
import msgspec

from appliance.errors import InvalidRequest
from appliance.store.db import Database
from appliance.store.records import Clock, new_id, scalar
from appliance.store.sessions import get_session


class KvEntry(msgspec.Struct, kw_only=True):
    id: str
    session_id: str
    model_fingerprint: str
    """Identifies the model file (and settings) the state was produced with."""
    prefix_hash: str
    """Hash of the token prefix the state covers."""
    n_tokens: int
    bytes: int
    path: str
    created: float
    last_used: float


class ParkResult(msgspec.Struct, kw_only=True):
    entry: KvEntry
    replaced_path: str | None = None
    """The file of the entry this one replaced, when it differs from the new path; delete it."""


_COLUMNS = (
    "id, session_id, model_fingerprint, prefix_hash, n_tokens, bytes, path, created, last_used"
)


def _entry(row: tuple[Any, ...]) -> KvEntry:
    return KvEntry(
        id=row[0],
        session_id=row[1],
        model_fingerprint=row[2],
        prefix_hash=row[3],
        n_tokens=row[4],
        bytes=row[5],
        path=row[6],
        created=row[7],
        last_used=row[8],
    )


def _park(
    con: apsw.Connection,
    session_id: str,
    fingerprint: str,
    prefix_hash: str,
    n_tokens: int,
    size: int,
    path: str,
    now: float,
) -> ParkResult:
    get_session(con, session_id)
    if n_tokens < 0 or size < 0:
        raise InvalidRequest("n_tokens and bytes of parked KV state cannot be negative")
    old = con.execute(
        "SELECT path FROM kv_entries WHERE session_id = ? AND model_fingerprint = ?",
        (session_id, fingerprint),
    ).fetchone()
    con.execute(
        "DELETE FROM kv_entries WHERE session_id = ? AND model_fingerprint = ?",
        (session_id, fingerprint),
    )
    entry = KvEntry(
        id=new_id("kv"),
        session_id=session_id,
        model_fingerprint=fingerprint,
        prefix_hash=prefix_hash,
        n_tokens=n_tokens,
        bytes=size,
        path=path,
        created=now,
        last_used=now,
    )
    con.execute(
        f"INSERT INTO kv_entries({_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?)",
        (entry.id, session_id, fingerprint, prefix_hash, n_tokens, size, path, now, now),
    )
    replaced = old[0] if old and old[0] != path else None
    return ParkResult(entry=entry, replaced_path=replaced)


def _candidates(con: apsw.Connection, budget: int, incoming: int) -> list[KvEntry]:
    """Oldest-used entries whose removal brings total + incoming under budget (all, if needed)."""
    total = int(scalar(con, "SELECT coalesce(sum(bytes), 0) FROM kv_entries"))
    excess = total + incoming - budget
    if excess <= 0:
        return []
    rows = con.execute(
        f"SELECT {_COLUMNS} FROM ("
        f" SELECT {_COLUMNS}, sum(bytes) OVER (ORDER BY last_used, id) AS freed"
        " FROM kv_entries) WHERE freed - bytes < ? ORDER BY last_used, id",
        (excess,),
    )
    return [_entry(r) for r in rows]


def _remove(con: apsw.Connection, entries: list[KvEntry]) -> None:
    con.executemany("DELETE FROM kv_entries WHERE id = ?", [(e.id,) for e in entries])


class KvIndex:
    """Rows of parked KV state. Safe to call from any thread except the event loop."""

    def __init__(self, db: Database, clock: Clock = time.time) -> None:
        self._db = db
        self._clock = clock

    def park(
        self,
        session_id: str,
        *,
        model_fingerprint: str,
        prefix_hash: str,
        n_tokens: int,
        bytes: int,
        path: str,
    ) -> ParkResult:
        """Record a parked state file (replacing the session's entry for that model); committed
        when this returns. Write the file first, then call this."""
        with self._db.transaction() as con:
            return _park(
                con,
                session_id,
                model_fingerprint,
                prefix_hash,
                n_tokens,
                bytes,
                path,
                self._clock(),
            )

    def lookup(self, session_id: str, model_fingerprint: str) -> KvEntry | None:
        """The session's parked state for this model, or None."""
        row = (
            self._db.connection()
            .execute(
                f"SELECT {_COLUMNS} FROM kv_entries WHERE session_id = ? AND model_fingerprint = ?",
                (session_id, model_fingerprint),
            )
            .fetchone()
        )
        return _entry(row) if row else None

    def touch(self, entry_id: str) -> None:
        """Mark the entry as just used (it becomes the last to be evicted); committed on return."""
        with self._db.transaction() as con:
            con.execute(
                "UPDATE kv_entries SET last_used = ? WHERE id = ?", (self._clock(), entry_id)
            )

    def remove(self, entry_id: str) -> str | None:
        """Delete one entry (e.g. its file proved damaged); returns its path, None if unknown."""
        with self._db.transaction() as con:
            row = con.execute("SELECT path FROM kv_entries WHERE id = ?", (entry_id,)).fetchone()
            con.execute("DELETE FROM kv_entries WHERE id = ?", (entry_id,))
            return str(row[0]) if row else None

    def entries(self, session_id: str | None = None) -> list[KvEntry]:
        """All entries (or one session's), least recently used first."""
        con = self._db.connection()
        if session_id is None:
            rows = con.execute(f"SELECT {_COLUMNS} FROM kv_entries ORDER BY last_used, id")
        else:
            rows = con.execute(
                f"SELECT {_COLUMNS} FROM kv_entries WHERE session_id = ? ORDER BY last_used, id",
                (session_id,),
            )
        return [_entry(r) for r in rows]

    def total_bytes(self) -> int:
        """Bytes of all parked state the index knows."""
        return int(scalar(self._db.connection(), "SELECT coalesce(sum(bytes), 0) FROM kv_entries"))

    def eviction_candidates(self, budget_bytes: int, *, incoming_bytes: int = 0) -> list[KvEntry]:
        """Least recently used entries to drop so that total + incoming_bytes <= budget_bytes.

        Read-only; use `evict_over_budget` to choose and delete in one transaction.
        """
        return _candidates(self._db.connection(), budget_bytes, incoming_bytes)

    def evict_over_budget(self, budget_bytes: int, *, incoming_bytes: int = 0) -> list[KvEntry]:
        """Choose and delete the LRU entries over budget; committed when this returns.

        Returns the evicted entries: delete their files.
        """
        with self._db.transaction() as con:
            victims = _candidates(con, budget_bytes, incoming_bytes)
            _remove(con, victims)
            return victims
