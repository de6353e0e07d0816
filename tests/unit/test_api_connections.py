"""Connection admission: which connection makes room, and how many the open-file limit allows."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from appliance.api.connections import ConnectionGuard, accept_backlog, connection_cap


@dataclass
class FakeTransport:
    closed: bool = False

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True


@dataclass
class FakeCycle:
    response_complete: bool = False


@dataclass(eq=False)
class FakeConn:
    transport: FakeTransport = field(default_factory=FakeTransport)
    cycle: FakeCycle | None = None


def busy(guard: ConnectionGuard, conn: FakeConn) -> None:
    conn.cycle = FakeCycle()
    guard.changed(conn)


def done(guard: ConnectionGuard, conn: FakeConn) -> None:
    assert conn.cycle is not None
    conn.cycle.response_complete = True
    guard.changed(conn)


async def test_a_new_connection_closes_the_longest_idle_one() -> None:
    guard = ConnectionGuard(max_connections=3, header_timeout_s=60)
    a, b, c, d = FakeConn(), FakeConn(), FakeConn(), FakeConn()
    for conn in (a, b, c):
        guard.opened(conn)
    busy(guard, a)
    done(guard, a)  # a finished a request: now the youngest idle one
    guard.opened(d)
    assert b.transport.closed and not a.transport.closed and not c.transport.closed
    assert guard.evicted == 1 and len(guard.open) == 3


async def test_busy_connections_are_never_closed_to_make_room() -> None:
    guard = ConnectionGuard(max_connections=2, header_timeout_s=60)
    a, b, c = FakeConn(), FakeConn(), FakeConn()
    for conn in (a, b):
        guard.opened(conn)
        busy(guard, conn)
    guard.opened(c)  # kept: uvicorn's limit_concurrency (cap + 1) answers its request with 503
    assert not any(x.transport.closed for x in (a, b, c))
    d = FakeConn()
    guard.opened(d)  # c is idle (never sent a request): it makes room
    assert c.transport.closed and not d.transport.closed


async def test_a_trickled_head_does_not_make_a_connection_younger() -> None:
    guard = ConnectionGuard(max_connections=2, header_timeout_s=60)
    a, b, c = FakeConn(), FakeConn(), FakeConn()
    guard.opened(a)
    guard.opened(b)
    guard.changed(a)  # some bytes of a request head arrived, no request yet
    guard.opened(c)
    assert a.transport.closed and not b.transport.closed


async def test_a_head_not_finished_in_time_is_cut_off() -> None:
    guard = ConnectionGuard(max_connections=10, header_timeout_s=0.05)
    slow, quick = FakeConn(), FakeConn()
    guard.opened(slow)
    guard.opened(quick)
    busy(guard, quick)
    await asyncio.sleep(0.15)
    assert slow.transport.closed and not quick.transport.closed and guard.timed_out == 1
    done(guard, quick)  # after its response the clock runs again, for the next request head
    await asyncio.sleep(0.15)
    assert quick.transport.closed


def test_the_cap_leaves_room_for_the_daemon_and_a_burst_of_accepts() -> None:
    assert connection_cap(1000, 1 << 20) == 1000
    small = connection_cap(1000, 1024)
    assert small + 3 * accept_backlog(1024) + 128 <= 1024
    assert connection_cap(1000, 100) == 16, "never none"
