"""The SQLite database of the appliance: connections, durability settings and the migration ladder.

Everything the appliance must remember across a restart (agents, sessions, messages, traces, usage,
API tokens) lives in one SQLite file reached through apsw. The rules, from apsw's best-practice
notes and from the issue that asks for this store:

- apsw's best practices are applied to each of our connections (never as a process-wide hook, so
  other apsw users in the process are left alone): WAL journal, foreign keys enforced, no
  double-quoted string literals, recursive triggers, SQLite's log forwarded to Python logging. On
  top of that every connection gets `synchronous=FULL` (a commit is on disk when it returns, so an
  acknowledged message survives a power cut, not only a `kill -9`), a busy timeout long enough for
  the few writers of one box (set before anything else touches the file), and every write
  transaction starts with `BEGIN IMMEDIATE` so a read-then-write transaction never fails half way
  with SQLITE_BUSY.
- `PRAGMA optimize` runs once when the database is closed, as SQLite advises, rather than on each
  connection's open (apsw's `connection_optimize`), where it may start an ANALYZE write while
  other threads are opening theirs.
- One connection per thread (`threading.local`); connections are never shared between threads.
- The database file is created 0600 before SQLite opens it (SQLite gives its WAL and SHM the
  same mode), whatever the umask: it holds every transcript. A full disk raises StoreFull (507,
  saying what to free) rather than apsw's FullError, a 500.
- The database is never touched from the asyncio event loop: `connection()` refuses, and
  `await db.run(fn, *args)` runs a blocking function on a small, bounded thread pool instead.
- The schema is an ordered ladder of named migration functions (see `appliance.store.migrations`).
  `PRAGMA user_version` counts the rungs applied; each rung runs in its own transaction together
  with the version bump and a row in `_migrations`, so a crash mid-upgrade leaves the database at
  the previous rung, never in between.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import ParamSpec, TypeVar

import apsw
import apsw.bestpractice

from appliance.errors import ApplianceError
from appliance.private import create_private, make_private, private_dir
from appliance.store.migrations import MIGRATIONS, Migration

log = logging.getLogger("appliance.store")

P = ParamSpec("P")
T = TypeVar("T")

BUSY_TIMEOUT_MS = 10_000
DEFAULT_WORKERS = 4

_logging_lock = threading.Lock()
_logging_forwarded = False


class StoreError(ApplianceError):
    """The database cannot be used (unreadable file, newer schema, used after close)."""

    status = 500
    code = "store_error"


class StoreFull(StoreError):
    """The disk (or quota) under the state directory is full: nothing more can be recorded."""

    status = 507
    code = "insufficient_storage"

    @classmethod
    def of(cls, path: Path, exc: BaseException) -> StoreFull:
        return cls(
            f"the disk holding the database {path} is full ({exc}); nothing more can be saved "
            "until space is freed: delete sessions you no longer need (DELETE /api/sessions/{id}), "
            "unused models (`appliance models`), or lower agents.kv_disk_budget_mb, or free space "
            "on that filesystem"
        )


def _forward_sqlite_log() -> None:
    """Send SQLite's own log to Python logging, once per process (each call adds a handler)."""
    global _logging_forwarded
    with _logging_lock:
        if not _logging_forwarded:
            apsw.bestpractice.library_logging()
            _logging_forwarded = True


_CONNECTION_PRACTICES = (
    apsw.bestpractice.connection_wal,
    apsw.bestpractice.connection_enable_foreign_keys,
    apsw.bestpractice.connection_dqs,
    apsw.bestpractice.connection_recursive_triggers,
)


def _on_event_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


class Database:
    """One SQLite file, one apsw connection per thread, migrated when opened.

    Constructing it opens the file (creating it and its directory), and brings the schema up to the
    end of `migrations`. Use it from worker threads only; from async code use `await db.run(...)`.
    """

    def __init__(
        self,
        path: Path,
        *,
        migrations: Sequence[tuple[str, Migration]] | None = None,
        max_workers: int = DEFAULT_WORKERS,
    ) -> None:
        if migrations is None:
            migrations = MIGRATIONS
        names = [name for name, _ in migrations]
        if len(set(names)) != len(names):
            raise ValueError(f"migration names must be unique: {names}")
        self.path = Path(path)
        self._migrations = list(migrations)
        self._local = threading.local()
        self._lock = threading.Lock()
        self._connections: list[apsw.Connection] = []
        self._closed = False
        self._executor = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="store")
        _forward_sqlite_log()
        try:
            if not self.path.parent.exists():
                private_dir(self.path.parent)
            # 0600 before SQLite opens it: SQLite gives the WAL and SHM files the database's mode
            create_private(self.path)
            for suffix in ("-wal", "-shm"):
                make_private(self.path.with_name(self.path.name + suffix))
        except OSError as exc:
            raise StoreError(
                f"cannot create the database {self.path}: {exc.strerror}. "
                "Choose a writable --state-dir."
            ) from exc
        try:
            self.migrate()
        except BaseException:
            self.close()
            raise

    # --- connections ---------------------------------------------------------------------------

    def connection(self) -> apsw.Connection:
        """This thread's connection, opened on first use. Raises StoreError on the event loop."""
        if self._closed:
            raise StoreError(f"the database {self.path} is closed; the appliance is shutting down")
        if _on_event_loop():
            raise StoreError(
                "the store was called on the asyncio event loop; wrap the call in "
                "`await db.run(fn, *args)` so SQLite runs on a worker thread"
            )
        con: apsw.Connection | None = getattr(self._local, "con", None)
        if con is None:
            con = self._open()
            self._local.con = con
        return con

    @contextlib.contextmanager
    def transaction(self) -> Iterator[apsw.Connection]:
        """This thread's connection inside one transaction (`BEGIN IMMEDIATE`, or a savepoint when
        nested): committed (durably) when the block exits normally, rolled back when it raises.

        The outermost BEGIN goes through `execute`, which lets other Python threads run while
        SQLite waits for the write lock. apsw's `with connection:` issues its BEGIN holding the
        GIL, so a thread waiting there for the lock starves the very thread that holds it (seen as
        "database is locked" after the whole busy timeout with four writers).
        """
        con = self.connection()
        try:
            if con.in_transaction:
                with con:  # a savepoint inside the transaction already open on this thread
                    yield con
                return
            con.execute("BEGIN IMMEDIATE")
            try:
                yield con
            except BaseException:
                if con.in_transaction:
                    con.execute("ROLLBACK")
                raise
            try:
                con.execute("COMMIT")
            except BaseException:
                if con.in_transaction:
                    con.execute("ROLLBACK")
                raise
        except apsw.FullError as exc:
            raise StoreFull.of(self.path, exc) from exc

    def _open(self) -> apsw.Connection:
        try:
            con = apsw.Connection(str(self.path))
            con.set_busy_timeout(BUSY_TIMEOUT_MS)
            for practice in _CONNECTION_PRACTICES:
                practice(con)
            con.pragma("synchronous", "FULL")
            if con.pragma("journal_mode") != "wal":
                raise StoreError(
                    f"{self.path}: SQLite could not switch to WAL mode; put the state directory "
                    "on a local filesystem (not NFS or a read-only mount)"
                )
        except apsw.Error as exc:
            raise StoreError(
                f"cannot open the database {self.path}: {exc}. Check that the state directory is "
                "writable and the file is an appliance database."
            ) from exc
        with self._lock:
            if self._closed:
                con.close()
                raise StoreError(f"the database {self.path} is closed")
            self._connections.append(con)
        return con

    # --- migrations ----------------------------------------------------------------------------

    @property
    def user_version(self) -> int:
        """How many rungs of the migration ladder this database has applied."""
        return int(self.connection().pragma("user_version"))

    @property
    def schema_version(self) -> int:
        """How many rungs this code knows (the length of the ladder)."""
        return len(self._migrations)

    def applied_migrations(self) -> list[str]:
        """Names of the applied rungs, in order, from the `_migrations` table."""
        rows = self.connection().execute("SELECT name FROM _migrations ORDER BY version")
        return [str(name) for (name,) in rows]

    def migrate(self) -> list[str]:
        """Apply the rungs this database lacks; return their names (empty when up to date).

        Each rung is committed with its version bump before the next starts. Safe to call from
        several processes at once: the version is re-read inside each write transaction.
        """
        with self.transaction() as con:
            con.execute(
                "CREATE TABLE IF NOT EXISTS _migrations ("
                " version INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, applied REAL NOT NULL)"
            )
        applied: list[str] = []
        while True:
            with self.transaction() as con:
                version = int(con.pragma("user_version"))
                if version > len(self._migrations):
                    raise StoreError(
                        f"the database {self.path} has schema version {version}, newer than this "
                        f"appliance knows ({len(self._migrations)}); upgrade the appliance or "
                        "point --state-dir at another directory"
                    )
                if version == len(self._migrations):
                    break
                name, rung = self._migrations[version]
                log.info("store: applying migration %d %s", version + 1, name)
                rung(con)
                con.execute(
                    "INSERT INTO _migrations(version, name, applied) VALUES (?, ?, unixepoch('subsec'))",
                    (version + 1, name),
                )
                con.pragma("user_version", version + 1)
            applied.append(name)
        return applied

    def integrity_check(self) -> str:
        """SQLite's `PRAGMA integrity_check`: "ok" or the problems found, one per line."""
        rows = self.connection().execute("PRAGMA integrity_check")
        return "\n".join(str(r[0]) for r in rows)

    # --- async bridge --------------------------------------------------------------------------

    async def run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run the blocking `fn(*args, **kwargs)` on the store's thread pool and await its result.

        The pool has a fixed number of threads, each with its own connection. If the awaiting task
        is cancelled, the call still finishes (and commits) on its thread.
        """
        if self._closed:
            raise StoreError(f"the database {self.path} is closed; the appliance is shutting down")
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(
                self._executor, functools.partial(fn, *args, **kwargs)
            )
        except apsw.FullError as exc:  # a write outside `transaction()` (or a full temp store)
            raise StoreFull.of(self.path, exc) from exc

    def close(self) -> None:
        """Wait for pool calls in progress, then close every connection. Idempotent."""
        if self._closed:
            return
        self._executor.shutdown(wait=True)
        with self._lock:
            self._closed = True
            cons, self._connections = self._connections, []
        if cons:
            try:
                cons[0].pragma("optimize")
            except apsw.Error as exc:
                log.warning("store: PRAGMA optimize on close of %s failed: %s", self.path, exc)
        for con in cons:
            try:
                con.close()
            except apsw.Error:
                log.exception("store: error closing a connection to %s", self.path)
        self._local = threading.local()
