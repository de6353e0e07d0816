"""What both clients share about the connection itself: the token header and the timeouts."""

from __future__ import annotations

import httpx

DEFAULT_URL = "http://127.0.0.1:8420"

NO_READ_LIMIT = httpx.Timeout(10.0, read=None)
"""For calls whose answer takes as long as the work (a model load, a sandbox run, a stream)."""


def auth_headers(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}
