"""The database layer on a real SQLite file: migration ladder, settings, threads, restart."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import apsw
import pytest

from appliance.store import AgentSpec, Store, StoreError
from appliance.store.db import Database
from appliance.store.migrations import MIGRATIONS

EXPECTED_TABLES = {
    "_migrations",
    "agents",
    "sessions",
    "messages",
    "tool_runs",
    "responses",
    "kv_entries",
    "api_tokens",
    "traces",
    "spans",
    "usage",
}


def tables(db: Database) -> set[str]:
    rows = db.connection().execute("SELECT name FROM sqlite_schema WHERE type = 'table'")
    return {r[0] for r in rows}


def test_migrations_from_empty_reach_the_end_of_the_ladder(tmp_path: Path) -> None:
    db = Database(tmp_path / "a.db")
    try:
        assert db.user_version == len(MIGRATIONS) == db.schema_version
        assert db.applied_migrations() == [name for name, _ in MIGRATIONS]
        assert tables(db) >= EXPECTED_TABLES
        assert db.migrate() == []  # up to date: a no-op
        assert db.user_version == len(MIGRATIONS)
    finally:
        db.close()


def test_reopening_applies_nothing_and_new_rungs_apply_in_order(tmp_path: Path) -> None:
    path = tmp_path / "a.db"
    Database(path).close()

    def m_extra(con: apsw.Connection) -> None:
        con.execute("CREATE TABLE extra (x INTEGER) STRICT")

    db = Database(path, migrations=[*MIGRATIONS, ("m999_extra", m_extra)])
    try:
        assert db.user_version == len(MIGRATIONS) + 1
        assert db.applied_migrations()[-1] == "m999_extra"
        assert "extra" in tables(db)
    finally:
        db.close()


def test_a_failing_rung_rolls_back_to_the_previous_one(tmp_path: Path) -> None:
    def m_half(con: apsw.Connection) -> None:
        con.execute("CREATE TABLE half (x INTEGER)")
        raise RuntimeError("rung failed")

    with pytest.raises(RuntimeError, match="rung failed"):
        Database(tmp_path / "a.db", migrations=[*MIGRATIONS, ("m999_half", m_half)])
    db = Database(tmp_path / "a.db")
    try:
        assert db.user_version == len(MIGRATIONS)
        assert "half" not in tables(db)
        assert "m999_half" not in db.applied_migrations()
    finally:
        db.close()


def test_a_database_from_a_newer_appliance_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "a.db"
    con = apsw.Connection(str(path))
    con.pragma("user_version", len(MIGRATIONS) + 5)
    con.close()
    with pytest.raises(StoreError, match="newer than this appliance knows"):
        Database(path)


def test_connections_use_wal_foreign_keys_and_full_sync(tmp_path: Path) -> None:
    db = Database(tmp_path / "a.db")
    try:
        con = db.connection()
        assert con.pragma("journal_mode") == "wal"
        assert con.pragma("foreign_keys") == 1
        assert con.pragma("synchronous") == 2  # FULL
        with db.transaction():
            assert con.txn_state() == apsw.mapping_txn_state["SQLITE_TXN_WRITE"]  # BEGIN IMMEDIATE
            with db.transaction():
                pass  # nested: a savepoint, the outer transaction stays open
            assert con.in_transaction
        assert not con.in_transaction
    finally:
        db.close()


def test_a_waiting_writer_lets_the_lock_holder_run(tmp_path: Path) -> None:
    # The holder keeps the write lock while it runs Python code. A second thread's transaction
    # must wait for it without holding the GIL, or the holder starves and the waiter fails with
    # "database is locked" once the busy timeout is spent.
    db = Database(tmp_path / "a.db")
    db.connection().execute("CREATE TABLE t(x)")
    locked, results = threading.Event(), []

    def holder() -> None:
        with db.transaction() as con:
            con.execute("INSERT INTO t VALUES (1)")
            locked.set()
            end = time.monotonic() + 0.5
            while time.monotonic() < end:
                pass
        results.append("holder")

    def waiter() -> None:
        locked.wait()
        with db.transaction() as con:
            con.execute("INSERT INTO t VALUES (2)")
        results.append("waiter")

    try:
        threads = [threading.Thread(target=holder), threading.Thread(target=waiter)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert results == ["holder", "waiter"]
        assert [x for (x,) in db.connection().execute("SELECT x FROM t ORDER BY x")] == [1, 2]
    finally:
        db.close()


def test_a_failed_commit_or_block_leaves_no_transaction_open(tmp_path: Path) -> None:
    db = Database(tmp_path / "a.db")
    con = db.connection()
    con.execute("CREATE TABLE t(x PRIMARY KEY)")
    try:
        with pytest.raises(apsw.ConstraintError), db.transaction():
            con.execute("INSERT INTO t VALUES (1)")
            con.execute("INSERT INTO t VALUES (1)")
        assert not con.in_transaction
        assert list(con.execute("SELECT count(*) FROM t")) == [(0,)]
    finally:
        db.close()


def test_each_thread_gets_its_own_connection(tmp_path: Path) -> None:
    db = Database(tmp_path / "a.db")
    try:
        seen: list[apsw.Connection] = []
        t = threading.Thread(target=lambda: seen.append(db.connection()))
        t.start()
        t.join()
        assert seen[0] is not db.connection()
        assert db.connection() is db.connection()
    finally:
        db.close()


async def test_the_event_loop_must_go_through_run(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="event loop"):
        Store(tmp_path)
    store = await Store.open(tmp_path)
    try:
        with pytest.raises(StoreError, match="event loop"):
            store.agents.create(AgentSpec(name="a", model="m"))
        agent = await store.run(store.agents.create, AgentSpec(name="a", model="m"))
        got = await asyncio.gather(*(store.run(store.agents.get, "a") for _ in range(8)))
        assert {g.id for g in got} == {agent.id}
    finally:
        await store.aclose()


def test_a_closed_store_refuses_calls(tmp_path: Path) -> None:
    store = Store(tmp_path)
    store.close()
    store.close()  # idempotent
    with pytest.raises(StoreError, match="closed"):
        store.agents.find("a")


def test_everything_survives_close_and_reopen(tmp_path: Path) -> None:
    with Store(tmp_path) as store:
        agent = store.agents.create(AgentSpec(name="keeper", model="m", tools=["run_code"]))
        session = store.sessions.create("keeper", title="remember me")
        store.messages.append(session.id, "user", "hello")
        reply = store.messages.append(session.id, "assistant", "hi there", tokens=3)
        token = store.tokens.create("ci")
    with Store(tmp_path) as store:
        assert store.agents.get("keeper") == agent
        again = store.sessions.get(session.id)
        assert again.title == "remember me" and again.message_count == 2
        assert [m.content for m in store.messages.transcript(session.id)] == ["hello", "hi there"]
        assert store.messages.get(reply.id) == reply
        assert store.tokens.verify(token.plain) is not None
        assert store.db.integrity_check() == "ok"
