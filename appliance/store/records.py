"""Plumbing shared by the store's repositories: ids, the clock, pages and JSON columns.

Ids are short strings with a kind prefix (`ses_`, `msg_`, `resp_`...) followed by a millisecond
timestamp and random bits, so they sort by creation time, never collide between processes, and a
list can be paged with "give me what comes after this id" alone.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable
from typing import Any, Generic, TypeVar

import apsw
import msgspec

from appliance.errors import InvalidRequest

T = TypeVar("T")

Clock = Callable[[], float]
"""Returns the current time as Unix seconds; `time.time` in the daemon, a fake in tests."""

_id_lock = threading.Lock()
_last_ms = 0


def new_id(prefix: str) -> str:
    """A new unique id, `prefix_` + 12 hex digits of milliseconds + 8 random hex digits.

    Ids made by one process sort in the order they were made (the millisecond part never goes
    backwards within a process); ids from different processes differ in the random part.
    """
    global _last_ms
    with _id_lock:
        now = int(time.time() * 1000)
        _last_ms = now if now > _last_ms else _last_ms + 1
        ms = _last_ms
    return f"{prefix}_{ms:012x}{secrets.token_hex(4)}"


class Page(msgspec.Struct, Generic[T], kw_only=True):
    """One page of a listing. Pass `next_after` back as `after` to get the next page."""

    items: list[T]
    next_after: str | None = None
    """The cursor of the next page, or None when this page is the last."""


def to_json(value: Any) -> str:
    """Encode a value for a JSON TEXT column."""
    return msgspec.json.encode(value).decode()


def from_json(text: str | None, type_: type[T], default: T) -> T:
    """Decode a JSON TEXT column into `type_`; NULL gives `default`."""
    if text is None:
        return default
    return msgspec.json.decode(text, type=type_)


def scalar(con: apsw.Connection, sql: str, params: tuple[Any, ...] = ()) -> Any:
    """The first column of the first row of a query that always returns a row (an aggregate)."""
    row = con.execute(sql, params).fetchone()
    if row is None:
        raise LookupError(f"query returned no row: {sql}")
    return row[0]


def page_of(items: list[T], limit: int, cursor: Callable[[T], str]) -> Page[T]:
    """Build a page from up to `limit + 1` rows fetched: the extra row only says "there is more"."""
    if len(items) > limit:
        items = items[:limit]
        return Page(items=items, next_after=cursor(items[-1]))
    return Page(items=items)


def check_limit(limit: int, maximum: int = 1000) -> int:
    """Validate a page size given by a caller."""
    if not 1 <= limit <= maximum:
        raise InvalidRequest(f"limit must be between 1 and {maximum}, got {limit}", param="limit")
    return limit
