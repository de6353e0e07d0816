"""Who may use the HTTP API: the bearer-token policy.

The rule, from the design: a bind to a loopback address with no API tokens is open (one person's
workstation); once at least one valid token exists, or whenever the daemon listens on any other
address, every route except `/api/health` needs `Authorization: Bearer <token>`. The OpenAI and
MCP routes honour the same tokens (the OpenAI SDK sends its api_key that way).

Tokens are checked against the store on every request (an indexed lookup of the SHA-256), so a
token created or revoked with `appliance token` while the daemon runs takes effect at once. The
plain token never leaves this module: no error message, log line or trace contains it.
"""

from __future__ import annotations

import ipaddress
import socket

from appliance.errors import Unauthorized
from appliance.store.tokens import ApiTokens

OPEN_PATHS = frozenset({"/api/health"})
"""Paths that never need a token (liveness probes)."""


def is_loopback(host: str) -> bool:
    """Whether binding `host` only accepts connections from this machine."""
    if host in ("localhost", ""):
        return host == "localhost"
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        try:
            return all(
                ipaddress.ip_address(a[4][0]).is_loopback for a in socket.getaddrinfo(host, None)
            )
        except OSError:
            return False


def _refusal(message: str) -> Unauthorized:
    return Unauthorized(message, headers={"WWW-Authenticate": 'Bearer realm="appliance"'})


class ApiAccess:
    """Decides, per request, whether it may go on. `check` blocks on SQLite: call it through
    `store.run`."""

    def __init__(self, tokens: ApiTokens, *, host: str) -> None:
        self.tokens = tokens
        self.host = host
        self.always_required = not is_loopback(host)

    def needs_check(self, path: str) -> bool:
        return path not in OPEN_PATHS

    def required(self) -> bool:
        return self.always_required or self.tokens.count_valid() > 0

    def check(self, authorization: str | None) -> Unauthorized | None:
        """None when the request may go on, else the error to answer with (status 401).

        On an open box (loopback, no tokens) any Authorization header is ignored: OpenAI clients
        always send one, with whatever api_key they were given."""
        if not self.required():
            return None
        if not authorization:
            return _refusal(
                "this appliance requires an API token: send `Authorization: Bearer <token>` "
                "(create one on the box with `appliance token create NAME`)"
            )
        scheme, _, plain = authorization.strip().partition(" ")
        if scheme.lower() != "bearer" or not plain.strip():
            return _refusal("the Authorization header must be `Bearer <token>`")
        if self.tokens.verify(plain.strip()) is not None:
            return None
        return _refusal(
            "the API token is not valid (unknown or revoked); see `appliance token list` "
            "and create a new one with `appliance token create NAME`"
        )
