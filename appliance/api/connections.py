"""Connection admission for the HTTP server: idle connections cannot lock clients out.

uvicorn accepts every connection it can and keeps one that never sends a byte open forever; a
connection that trickles its request head in a byte at a time cancels the keep-alive timer each
time (slowloris). Once open connections reach the open-file limit, `accept()` fails with EMFILE
and asyncio stops accepting for a second at a time, so a thousand idle sockets time
`/api/health` out for everyone. Three things here prevent that:

- the soft RLIMIT_NOFILE is raised to the hard limit at start (`raise_open_file_limit`);
- open connections are capped below that limit, with room kept for the daemon's own files
  (database, model workers, sandboxes) (`connection_cap`). At the cap, a new connection closes
  the one that has been idle longest (no request in progress: never sent one, finished its last
  response, or still trickling its head), the way nginx reuses keep-alive connections; when
  every connection is busy with a request, the new one is kept and uvicorn's
  `limit_concurrency` (the cap + 1) answers its request with 503;
- a connection must finish its request head within `server.header_timeout_s` of opening or of
  its last response, else it is closed (uvicorn's own keep-alive timeout only covers silence).

`guarded_protocol` wraps uvicorn's HTTP protocol class (h11 or httptools, whichever it picked)
with these hooks; `ConnectionGuard` holds the state all connections share.
"""

from __future__ import annotations

import asyncio
import logging
import resource
from collections import OrderedDict
from typing import Any

log = logging.getLogger("appliance.server")

OWN_FILES_MIN = 128
"""Open files kept for the daemon's own use (database, model workers, sandboxes), at least; an
eighth of the limit when that is more."""


def raise_open_file_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit; return the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:
            log.warning("could not raise the open-file limit from %d to %d: %s", soft, target, exc)
    return soft


def accept_backlog(open_files: int) -> int:
    """The listen backlog, which is also how many connections asyncio accepts in one go."""
    return max(64, min(2048, open_files // 8))


def connection_cap(configured: int, open_files: int) -> int:
    """At most `configured` connections, and never so many that the daemon runs out of files.

    asyncio accepts up to a backlog of connections at a time and their `connection_made` (where
    a connection over the cap closes an idle one) runs a loop iteration or two later, so a burst
    can put a few backlogs' worth of sockets on top of the cap before any is closed."""
    own = max(OWN_FILES_MIN, open_files // 8)
    return max(16, min(configured, open_files - own - 3 * accept_backlog(open_files)))


class ConnectionGuard:
    """Open connections and, oldest first, the idle ones; shared by every connection."""

    def __init__(self, max_connections: int, header_timeout_s: float) -> None:
        self.max_connections = max_connections
        self.header_timeout_s = header_timeout_s
        self.open: set[Any] = set()
        self.idle: OrderedDict[Any, asyncio.TimerHandle | None] = OrderedDict()
        self.evicted = 0
        self.timed_out = 0

    def opened(self, conn: Any) -> None:
        self.open.add(conn)
        self._mark_idle(conn)
        while len(self.open) > self.max_connections:
            victim = next((c for c in self.idle if c is not conn), None)
            if victim is None:
                return  # every other one is busy: uvicorn's limit_concurrency answers 503
            self.evicted += 1
            self._close(victim)

    def closed(self, conn: Any) -> None:
        self.open.discard(conn)
        self._forget_idle(conn)

    def changed(self, conn: Any) -> None:
        """After data arrived or a response ended: is a request in progress now?"""
        if conn not in self.open:
            return
        cycle = getattr(conn, "cycle", None)
        if cycle is not None and not cycle.response_complete:
            self._forget_idle(conn)
        else:
            self._mark_idle(conn)

    def _mark_idle(self, conn: Any) -> None:
        if conn in self.idle:
            return  # still idle: a trickled head does not make it any younger
        loop = asyncio.get_running_loop()
        self.idle[conn] = loop.call_later(self.header_timeout_s, self._expire, conn)

    def _forget_idle(self, conn: Any) -> None:
        timer = self.idle.pop(conn, None)
        if timer is not None:
            timer.cancel()

    def _expire(self, conn: Any) -> None:
        if conn in self.idle:
            self.idle[conn] = None
            self.timed_out += 1
            self._close(conn)

    def _close(self, conn: Any) -> None:
        self.open.discard(conn)
        self._forget_idle(conn)
        transport = getattr(conn, "transport", None)
        if transport is not None and not transport.is_closing():
            transport.close()


def guarded_protocol(
    base: type[asyncio.Protocol], guard: ConnectionGuard
) -> type[asyncio.Protocol]:
    """`base` (uvicorn's HTTP protocol) reporting its connection's state to `guard`."""

    class GuardedProtocol(base):  # type: ignore[valid-type,misc]
        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            guard.opened(self)

        def connection_lost(self, exc: Exception | None) -> None:
            guard.closed(self)
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            guard.changed(self)

        def on_response_complete(self) -> None:
            super().on_response_complete()
            guard.changed(self)

    GuardedProtocol.__name__ = GuardedProtocol.__qualname__ = f"Guarded{base.__name__}"
    return GuardedProtocol
