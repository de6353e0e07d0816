"""API tokens: bearer secrets for the HTTP API, stored hashed.

`create` returns the plain token exactly once; the database keeps its SHA-256 and a short prefix
people can recognise in `token list`. A token has 256 random bits, so a plain hash (no salt, no
slow KDF) is enough: nobody can brute-force the preimage, and verification is one indexed lookup.
Revoked tokens stay listed (with the revocation time) but never verify again.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import time
from typing import Any

import apsw
import msgspec

from appliance.errors import Conflict, InvalidRequest, NotFound
from appliance.store.db import Database
from appliance.store.records import Clock, new_id, scalar

TOKEN_PREFIX = "apl_"
LAST_USED_RESOLUTION_S = 60.0
"""`last_used` is rewritten at most this often per token, so verification is rarely a write."""

TOKEN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")


class ApiToken(msgspec.Struct, kw_only=True):
    id: str
    name: str
    prefix: str
    """The first characters of the plain token, for people to recognise it."""
    created: float
    last_used: float | None
    revoked: float | None
    """When it was revoked; None while it is valid."""


class NewApiToken(msgspec.Struct, kw_only=True):
    token: ApiToken
    plain: str
    """The secret to give to the client. It is not stored and cannot be shown again."""


_COLUMNS = "id, name, prefix, created, last_used, revoked"


def hash_token(plain: str) -> str:
    """The stored form of a token: lowercase SHA-256 hex of its UTF-8 bytes."""
    return hashlib.sha256(plain.encode()).hexdigest()


def _token(row: tuple[Any, ...]) -> ApiToken:
    return ApiToken(
        id=row[0], name=row[1], prefix=row[2], created=row[3], last_used=row[4], revoked=row[5]
    )


def _create(con: apsw.Connection, name: str, now: float) -> NewApiToken:
    if not TOKEN_NAME.match(name):
        raise InvalidRequest(
            f"token name {name!r} is not valid: use 1-64 letters, digits, '.', '_', '@' or '-'",
            param="name",
        )
    if con.execute(
        "SELECT 1 FROM api_tokens WHERE name = ? AND revoked IS NULL", (name,)
    ).fetchone():
        raise Conflict(
            f"a valid token named {name!r} exists; revoke it first or pick another name",
            param="name",
        )
    plain = TOKEN_PREFIX + secrets.token_urlsafe(32)
    token = ApiToken(
        id=new_id("tok"),
        name=name,
        prefix=plain[: len(TOKEN_PREFIX) + 6],
        created=now,
        last_used=None,
        revoked=None,
    )
    con.execute(
        "INSERT INTO api_tokens(id, name, hash, prefix, created) VALUES (?,?,?,?,?)",
        (token.id, name, hash_token(plain), token.prefix, now),
    )
    return NewApiToken(token=token, plain=plain)


def _revoke(con: apsw.Connection, ref: str, now: float) -> ApiToken:
    row = con.execute(
        f"SELECT {_COLUMNS} FROM api_tokens WHERE id = ? OR (name = ? AND revoked IS NULL)",
        (ref, ref),
    ).fetchone()
    if row is None:
        raise NotFound(f"no valid token {ref!r}; see `appliance token list`", param="token")
    token = _token(row)
    if token.revoked is None:
        con.execute("UPDATE api_tokens SET revoked = ? WHERE id = ?", (now, token.id))
        token = msgspec.structs.replace(token, revoked=now)
    return token


class ApiTokens:
    """The api_tokens table. Safe to call from any thread except the event loop."""

    def __init__(self, db: Database, clock: Clock = time.time) -> None:
        self._db = db
        self._clock = clock

    def create(self, name: str) -> NewApiToken:
        """Mint a token; committed when this returns. The plain secret is only in the result."""
        with self._db.transaction() as con:
            return _create(con, name, self._clock())

    def verify(self, plain: str) -> ApiToken | None:
        """The valid (not revoked) token whose secret this is, or None. Updates `last_used`
        (at most once a minute per token, committed when it does)."""
        if not plain.startswith(TOKEN_PREFIX):
            return None
        con = self._db.connection()
        row = con.execute(
            f"SELECT {_COLUMNS} FROM api_tokens WHERE hash = ? AND revoked IS NULL",
            (hash_token(plain),),
        ).fetchone()
        if row is None:
            return None
        token = _token(row)
        now = self._clock()
        if token.last_used is None or now - token.last_used >= LAST_USED_RESOLUTION_S:
            with self._db.transaction() as con:
                con.execute("UPDATE api_tokens SET last_used = ? WHERE id = ?", (now, token.id))
            token = msgspec.structs.replace(token, last_used=now)
        return token

    def revoke(self, ref: str) -> ApiToken:
        """Revoke the token with this id or (valid) name; committed when this returns.

        Revoking an already revoked token (by id) is a no-op. NotFound otherwise.
        """
        with self._db.transaction() as con:
            return _revoke(con, ref, self._clock())

    def list(self, *, include_revoked: bool = True) -> list[ApiToken]:
        """Tokens, oldest first. Never includes secrets or hashes."""
        where = "" if include_revoked else " WHERE revoked IS NULL"
        rows = self._db.connection().execute(
            f"SELECT {_COLUMNS} FROM api_tokens{where} ORDER BY created, id"
        )
        return [_token(r) for r in rows]

    def count_valid(self) -> int:
        """How many tokens are valid; the daemon refuses a non-loopback bind when it is 0."""
        return int(
            scalar(self._db.connection(), "SELECT count(*) FROM api_tokens WHERE revoked IS NULL")
        )
