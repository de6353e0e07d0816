"""What can go wrong between the console and a daemon, as the console shows it.

The daemon's own errors arrive as OpenAI-style bodies; the client turns each failed call into one
of these, so screens only decide how to show it: a banner for `DaemonUnreachable` and
`DaemonUnauthorized` (they concern every screen), a "not available on this daemon" panel for
`NotAvailable` (an older or partial daemon without that route), and the daemon's message for
anything else.
"""

from __future__ import annotations


class DaemonError(Exception):
    """A call the daemon answered with an error; `message` is the daemon's own text."""

    def __init__(self, message: str, *, status: int | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code


class DaemonUnreachable(DaemonError):
    """No answer at all: the daemon is down, the URL is wrong, or the network is."""


class DaemonUnauthorized(DaemonError):
    """The daemon refused the API token (or needs one and none was given)."""


class NotAvailable(DaemonError):
    """The daemon has no such route: it is older than this console or built without the feature."""
