"""The schema of the appliance database, as an ordered ladder of named migrations.

Each rung is a function decorated with `@migration`; its name is recorded in `_migrations` and the
ladder's length is `PRAGMA user_version` once applied (see `appliance.store.db.Database.migrate`).
Rungs are append-only: a released rung is never edited, a change is a new rung at the end. A rung
runs inside the transaction the runner opened, so it must not BEGIN/COMMIT itself.

All tables are STRICT (SQLite checks the column types) and JSON columns are checked with
`json_valid`. Rows that belong to a session (messages, tool runs, response links, parked KV state)
are deleted with it through `ON DELETE CASCADE`; operational records (traces, usage) keep a plain
session id so accounting survives the session.
"""

from __future__ import annotations

from collections.abc import Callable

import apsw

Migration = Callable[[apsw.Connection], None]

MIGRATIONS: list[tuple[str, Migration]] = []
"""The ladder, in order. Index i holds the rung that takes user_version from i to i + 1."""


def migration(fn: Migration) -> Migration:
    """Append `fn` to the ladder under its function name."""
    MIGRATIONS.append((fn.__name__, fn))
    return fn


@migration
def m001_initial_schema(con: apsw.Connection) -> None:
    """Agents, sessions and their transcripts, parked KV state, and the operations tables."""
    con.execute(
        """
        CREATE TABLE agents (
            id          TEXT PRIMARY KEY,
            name        TEXT NOT NULL UNIQUE,
            description TEXT NOT NULL DEFAULT '',
            persona     TEXT NOT NULL DEFAULT '',
            model       TEXT NOT NULL,
            tools       TEXT NOT NULL DEFAULT '[]' CHECK (json_valid(tools)),
            sandbox     TEXT,
            params      TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(params)),
            source      TEXT NOT NULL CHECK (source IN ('profile', 'api')),
            source_path TEXT,
            created     REAL NOT NULL,
            updated     REAL NOT NULL
        ) STRICT;

        CREATE TABLE sessions (
            id                TEXT PRIMARY KEY,
            agent_id          TEXT REFERENCES agents(id) ON DELETE RESTRICT,
            title             TEXT NOT NULL DEFAULT '',
            model             TEXT,
            status            TEXT NOT NULL DEFAULT 'created'
                              CHECK (status IN ('created', 'active', 'parked')),
            parent_id         TEXT REFERENCES sessions(id) ON DELETE SET NULL,
            forked_at_message TEXT,
            last_response_id  TEXT,
            sandbox_id        TEXT,
            created           REAL NOT NULL,
            updated           REAL NOT NULL
        ) STRICT;
        CREATE INDEX sessions_agent ON sessions(agent_id);
        CREATE INDEX sessions_parent ON sessions(parent_id);

        CREATE TABLE messages (
            id           TEXT PRIMARY KEY,
            session_id   TEXT NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
            seq          INTEGER NOT NULL,
            role         TEXT NOT NULL CHECK (role IN ('system', 'user', 'assistant', 'tool')),
            content      TEXT,
            tool_calls   TEXT CHECK (tool_calls IS NULL OR json_valid(tool_calls)),
            tool_call_id TEXT,
            name         TEXT,
            created      REAL NOT NULL,
            tokens       INTEGER,
            meta         TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(meta)),
            UNIQUE (session_id, seq)
        ) STRICT;

        CREATE TABLE tool_runs (
            id          TEXT PRIMARY KEY,
            session_id  TEXT NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
            message_id  TEXT REFERENCES messages(id) ON DELETE CASCADE,
            call_id     TEXT,
            tool        TEXT NOT NULL,
            arguments   TEXT NOT NULL CHECK (json_valid(arguments)),
            result      TEXT,
            status      TEXT NOT NULL
                        CHECK (status IN ('running', 'ok', 'error', 'timeout', 'cancelled')),
            duration_ms REAL,
            created     REAL NOT NULL,
            finished    REAL
        ) STRICT;
        CREATE INDEX tool_runs_session ON tool_runs(session_id);
        CREATE INDEX tool_runs_message ON tool_runs(message_id);

        CREATE TABLE responses (
            id                   TEXT PRIMARY KEY,
            session_id           TEXT NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
            previous_response_id TEXT,
            first_seq            INTEGER NOT NULL,
            last_seq             INTEGER NOT NULL,
            model                TEXT,
            created              REAL NOT NULL,
            CHECK (first_seq <= last_seq)
        ) STRICT;
        CREATE INDEX responses_session ON responses(session_id);

        CREATE TABLE kv_entries (
            id                TEXT PRIMARY KEY,
            session_id        TEXT NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
            model_fingerprint TEXT NOT NULL,
            prefix_hash       TEXT NOT NULL,
            n_tokens          INTEGER NOT NULL CHECK (n_tokens >= 0),
            bytes             INTEGER NOT NULL CHECK (bytes >= 0),
            path              TEXT NOT NULL,
            created           REAL NOT NULL,
            last_used         REAL NOT NULL,
            UNIQUE (session_id, model_fingerprint)
        ) STRICT;
        CREATE INDEX kv_entries_lru ON kv_entries(last_used);

        CREATE TABLE api_tokens (
            id        TEXT PRIMARY KEY,
            name      TEXT NOT NULL,
            hash      TEXT NOT NULL UNIQUE,
            prefix    TEXT NOT NULL,
            created   REAL NOT NULL,
            last_used REAL,
            revoked   REAL
        ) STRICT;
        CREATE UNIQUE INDEX api_tokens_active_name ON api_tokens(name) WHERE revoked IS NULL;

        CREATE TABLE traces (
            id          TEXT PRIMARY KEY,
            kind        TEXT NOT NULL,
            name        TEXT NOT NULL,
            status      TEXT NOT NULL DEFAULT 'ok',
            started     REAL NOT NULL,
            duration_ms REAL NOT NULL,
            attrs       TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(attrs)),
            model       TEXT,
            session_id  TEXT,
            agent       TEXT
        ) STRICT;
        CREATE INDEX traces_started ON traces(started);
        CREATE INDEX traces_session ON traces(session_id);
        CREATE INDEX traces_model ON traces(model);

        CREATE TABLE spans (
            trace_id    TEXT NOT NULL REFERENCES traces(id) ON DELETE CASCADE,
            id          TEXT NOT NULL,
            parent      TEXT,
            name        TEXT NOT NULL,
            start_ms    REAL NOT NULL,
            duration_ms REAL NOT NULL,
            attrs       TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(attrs)),
            PRIMARY KEY (trace_id, id)
        ) STRICT;

        CREATE TABLE usage (
            id            INTEGER PRIMARY KEY,
            ts            REAL NOT NULL,
            model         TEXT,
            agent         TEXT,
            session_id    TEXT,
            tokens_in     INTEGER NOT NULL DEFAULT 0,
            tokens_out    INTEGER NOT NULL DEFAULT 0,
            requests      INTEGER NOT NULL DEFAULT 0,
            gpu_seconds   REAL NOT NULL DEFAULT 0,
            busy_seconds  REAL NOT NULL DEFAULT 0,
            energy_j      REAL NOT NULL DEFAULT 0,
            sandbox_cpu_s REAL NOT NULL DEFAULT 0
        ) STRICT;
        CREATE INDEX usage_ts ON usage(ts);
        """
    )


@migration
def m002_agent_mcp_servers(con: apsw.Connection) -> None:
    """Agents may list the MCP servers whose tools they call (a JSON list of server entries)."""
    con.execute(
        "ALTER TABLE agents ADD COLUMN mcp_servers TEXT NOT NULL DEFAULT '[]'"
        " CHECK (json_valid(mcp_servers))"
    )


@migration
def m003_agent_sandbox_image(con: apsw.Connection) -> None:
    """Agents may name an OCI image their `run_code` sandbox runs in (NULL: the host's)."""
    con.execute("ALTER TABLE agents ADD COLUMN sandbox_image TEXT")
