"""The `Store`: the appliance's database and all its repositories, opened from the state directory.

This is what the services receive through their constructors. It opens (and migrates)
`<state_dir>/appliance.db` and exposes one repository per responsibility:

    store.agents     Agents          agents from profiles and the API
    store.sessions   Sessions        sessions: create, list, update, fork, delete (+ cleanup list)
    store.messages   Messages        session transcripts, append-only
    store.tool_runs  ToolRuns        tool calls and their outcomes
    store.responses  ResponseLinks   /v1/responses ids -> session and message range
    store.kv         KvIndex         parked KV state files, disk budget, LRU eviction
    store.tokens     ApiTokens       hashed API tokens
    store.traces     TraceLog        traces and spans with retention
    store.usage      UsageLedger     usage facts and their sums

Every repository method blocks on SQLite. Async code calls them through `await store.run(fn,
*args)`, e.g. `await store.run(store.messages.append, sid, "user", text)`, which runs the call on
the store's own thread pool; calling them on the event loop raises StoreError.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import ParamSpec, TypeVar

from appliance.private import private_dir
from appliance.store.agents import Agents
from appliance.store.db import DEFAULT_WORKERS, Database
from appliance.store.kv_index import KvIndex
from appliance.store.messages import Messages
from appliance.store.records import Clock
from appliance.store.responses import ResponseLinks
from appliance.store.sessions import Sessions
from appliance.store.tokens import ApiTokens
from appliance.store.tool_runs import ToolRuns
from appliance.store.traces import TraceLog
from appliance.store.usage import UsageLedger

P = ParamSpec("P")
T = TypeVar("T")

DB_FILENAME = "appliance.db"


class Store:
    """The opened, migrated database of one state directory, with its repositories."""

    def __init__(
        self,
        state_dir: Path,
        *,
        clock: Clock = time.time,
        max_workers: int = DEFAULT_WORKERS,
    ) -> None:
        self.state_dir = Path(state_dir)
        private_dir(self.state_dir)
        self.db = Database(self.state_dir / DB_FILENAME, max_workers=max_workers)
        self.agents = Agents(self.db, clock)
        self.sessions = Sessions(self.db, clock)
        self.messages = Messages(self.db, clock)
        self.tool_runs = ToolRuns(self.db, clock)
        self.responses = ResponseLinks(self.db, clock)
        self.kv = KvIndex(self.db, clock)
        self.tokens = ApiTokens(self.db, clock)
        self.traces = TraceLog(self.db, clock)
        self.usage = UsageLedger(self.db, clock)

    @classmethod
    async def open(
        cls, state_dir: Path, *, clock: Clock = time.time, max_workers: int = DEFAULT_WORKERS
    ) -> Store:
        """Open (and migrate) from async code, off the event loop."""
        return await asyncio.to_thread(cls, state_dir, clock=clock, max_workers=max_workers)

    async def run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Await a blocking store call on the store's thread pool (see Database.run)."""
        return await self.db.run(fn, *args, **kwargs)

    def close(self) -> None:
        """Finish pending pool calls and close every connection. Idempotent."""
        self.db.close()

    async def aclose(self) -> None:
        """`close` from async code, off the event loop."""
        await asyncio.to_thread(self.close)

    def __enter__(self) -> Store:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
