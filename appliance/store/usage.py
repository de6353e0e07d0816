"""The usage ledger: what each request, turn or sandbox run cost, summed on demand.

Rows are small facts appended as work finishes (tokens in/out, requests, GPU-seconds resident and
busy, energy from NVML's counter, sandbox CPU-seconds), tagged with model, agent and session.
`aggregate` sums them grouped by one of those tags since a point in time; that is all
`GET /api/usage?by=...&since=...` needs. The session id is a plain column, so accounting outlives
deleted sessions.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Literal

import apsw

from appliance.errors import InvalidRequest
from appliance.store.db import Database
from appliance.store.records import Clock
from appliance.telemetry.usage import AMOUNTS, UsageAmounts, UsageRecord

UsageGroup = Literal["model", "agent", "session"]
_GROUP_COLUMN = {"model": "model", "agent": "agent", "session": "session_id"}


class UsageTotals(UsageAmounts, kw_only=True):
    """The amounts of usage summed over one group (or over everything)."""

    key: str | None
    """The model, agent or session id the row sums; None for usage without one."""


_ZERO = UsageAmounts()
_SUMS = ", ".join(f"coalesce(sum({name}), {getattr(_ZERO, name)!r})" for name in AMOUNTS)


def _totals(key: str | None, row: Sequence[float]) -> UsageTotals:
    kinds = {name: type(getattr(_ZERO, name)) for name in AMOUNTS}  # int or float columns
    return UsageTotals(key=key, **{n: kinds[n](v) for n, v in zip(AMOUNTS, row, strict=True)})


def _insert(con: apsw.Connection, records: Sequence[UsageRecord], now: float) -> None:
    for r in records:
        if (
            min(r.tokens_in, r.tokens_out, r.requests) < 0
            or min(r.gpu_seconds, r.busy_seconds, r.energy_j, r.sandbox_cpu_s) < 0
        ):
            raise InvalidRequest("usage amounts cannot be negative")
    con.executemany(
        "INSERT INTO usage(ts, model, agent, session_id, tokens_in, tokens_out, requests,"
        " gpu_seconds, busy_seconds, energy_j, sandbox_cpu_s) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
        [
            (
                r.ts if r.ts is not None else now,
                r.model,
                r.agent,
                r.session_id,
                r.tokens_in,
                r.tokens_out,
                r.requests,
                r.gpu_seconds,
                r.busy_seconds,
                r.energy_j,
                r.sandbox_cpu_s,
            )
            for r in records
        ],
    )


class UsageLedger:
    """The usage table. Safe to call from any thread except the event loop."""

    def __init__(self, db: Database, clock: Clock = time.time) -> None:
        self._db = db
        self._clock = clock

    def record(self, *records: UsageRecord) -> None:
        """Append usage facts in one transaction; committed when this returns."""
        with self._db.transaction() as con:
            _insert(con, records, self._clock())

    def aggregate(
        self, by: UsageGroup, *, since: float | None = None, until: float | None = None
    ) -> list[UsageTotals]:
        """Sums grouped by model, agent or session over since <= ts < until, ordered by key
        (usage without that tag comes first, as key None)."""
        column = _GROUP_COLUMN.get(by)
        if column is None:
            raise InvalidRequest(
                f"usage can be grouped by {', '.join(_GROUP_COLUMN)}, not {by!r}", param="by"
            )
        rows = self._db.connection().execute(
            f"SELECT {column}, {_SUMS} FROM usage WHERE ts >= ? AND ts < ?"
            f" GROUP BY {column} ORDER BY {column}",
            (
                since if since is not None else float("-inf"),
                until if until is not None else float("inf"),
            ),
        )
        return [_totals(r[0], r[1:]) for r in rows]

    def total(self, *, since: float | None = None) -> UsageTotals:
        """Everything since `since`, summed (key None)."""
        rows = self._db.connection().execute(
            f"SELECT {_SUMS} FROM usage WHERE ts >= ?",
            (since if since is not None else float("-inf"),),
        )
        return _totals(None, next(iter(rows)))

    def prune(self, *, older_than: float) -> int:
        """Delete facts older than `older_than`; committed when this returns. Returns the count."""
        with self._db.transaction() as con:
            con.execute("DELETE FROM usage WHERE ts < ?", (older_than,))
            return con.changes()
