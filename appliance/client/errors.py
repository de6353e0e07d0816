"""What can go wrong between a client (the CLI, the console) and a daemon.

The daemon's errors arrive as OpenAI-style bodies (`{"error": {"message", "code", ...}}`), or as
Litestar's `{"detail": ...}` for the few it answers itself; `error_for` reads either, once, and
gives one `ClientError` carrying the daemon's own message, its HTTP status and code. Callers
decide only how to show it: the console shows a banner for `DaemonUnreachable` and
`DaemonUnauthorized` (they concern every screen) and a "not available on this daemon" panel for
`NotAvailable` (an older or partial daemon without that route); the CLI prints the message.

`ClientError` is an `ApplianceError`, so the CLI's one `except ApplianceError` covers it.
"""

from __future__ import annotations

from typing import Any

import httpx

from appliance.errors import ApplianceError


class ClientError(ApplianceError):
    """A call the daemon answered with an error; `message` is the daemon's own text."""

    def __init__(self, message: str, *, status: int | None = None, code: str | None = None) -> None:
        super().__init__(message, code=code)
        self.status = status if status is not None else 0
        self.daemon_code = code
        """The code the daemon sent (None when it sent none)."""


class DaemonUnreachable(ClientError):
    """No answer at all: the daemon is down, the URL is wrong, or the network is."""


class DaemonUnauthorized(ClientError):
    """The daemon refused the API token (or needs one and none was given)."""


class NotAvailable(ClientError):
    """The daemon has no such route: it is older than this client or built without the feature."""


def error_text(resp: httpx.Response) -> tuple[str, str | None]:
    """The daemon's message and code from an error answer (already read)."""
    try:
        body: Any = resp.json()
    except ValueError:
        return (resp.text.strip() or resp.reason_phrase, None)
    err = body.get("error") if isinstance(body, dict) else None
    if isinstance(err, dict):
        code = err.get("code")
        return (
            str(err.get("message") or resp.reason_phrase),
            str(code) if code is not None else None,
        )
    if isinstance(body, dict) and "detail" in body:
        return (str(body["detail"]), None)
    return (resp.text.strip() or resp.reason_phrase, None)


def error_for(resp: httpx.Response, url: str) -> ClientError | None:
    """The error an answer stands for, or None for a success. The body must have been read."""
    if resp.status_code < 400:
        return None
    text, code = error_text(resp)
    if resp.status_code in (401, 403):
        return DaemonUnauthorized(
            f"the appliance at {url} refused the token ({text}). Pass a valid one with --token or "
            "APPLIANCE_TOKEN (`appliance token create NAME` makes one).",
            status=resp.status_code,
            code=code,
        )
    if resp.status_code in (404, 405) and code in (None, "404", "405"):
        route = f"{resp.request.method} {resp.request.url.path}"
        return NotAvailable(
            f"{route} is not available on this daemon (an older or partial build).",
            status=resp.status_code,
            code=code,
        )
    return ClientError(text, status=resp.status_code, code=code)


def unreachable(url: str, exc: Exception) -> DaemonUnreachable:
    reason = str(exc) or type(exc).__name__
    return DaemonUnreachable(
        f"cannot reach the appliance at {url} ({reason}). Start it with "
        "`appliance serve`, or pass --url."
    )
