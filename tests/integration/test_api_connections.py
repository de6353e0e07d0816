"""Idle connections cannot lock clients out of a live daemon.

Under `ulimit -n 1024`, 1100 idle TCP connections used to exhaust the daemon's file descriptors:
accept() failed with EMFILE and `/api/health` timed out for everyone. Now the daemon caps its
connections below its open-file limit and closes the longest-idle one to admit a new one, and a
request head that trickles in is cut off after `server.header_timeout_s`.
"""

from __future__ import annotations

import contextlib
import re
import resource
import selectors
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.integration.daemon import running_daemon

DAEMON_FILES = 1024
FLOOD = 1100


def low_file_limit() -> None:
    """In the daemon's process, before it starts: soft = hard = 1024, so raising cannot help."""
    resource.setrlimit(resource.RLIMIT_NOFILE, (DAEMON_FILES, DAEMON_FILES))


@contextlib.contextmanager
def open_sockets(port: int, n: int) -> Iterator[list[socket.socket]]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < n + 256:
        pytest.skip(f"this test process may open only {hard} files; it needs {n + 256}")
    if soft != resource.RLIM_INFINITY and soft < n + 256:
        resource.setrlimit(resource.RLIMIT_NOFILE, (n + 256, hard))
    socks: list[socket.socket] = []
    try:
        # in bursts smaller than the daemon's listen backlog, so the kernel hands every one of
        # them to the daemon (a burst past it would leave some half-open in the kernel instead)
        with selectors.DefaultSelector() as sel:
            for start in range(0, n, 50):
                for _ in range(min(50, n - start)):
                    s = socket.socket()
                    s.setblocking(False)
                    s.connect_ex(("127.0.0.1", port))
                    socks.append(s)
                    sel.register(s, selectors.EVENT_WRITE)
                pending, deadline = len(sel.get_map()), time.monotonic() + 10
                while pending and time.monotonic() < deadline:
                    for key, _ in sel.select(1):
                        sel.unregister(key.fileobj)
                        pending -= 1
                time.sleep(0.02)
        assert all(s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0 for s in socks)
        yield socks
    finally:
        for s in socks:
            s.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def closed_by_peer(s: socket.socket) -> bool:
    try:
        return s.recv(1, socket.MSG_PEEK) == b""  # (the socket does not block)
    except BlockingIOError:
        return False
    except OSError:
        return True


def health_s(url: str) -> float:
    """Seconds /api/health takes on a new connection (it must answer within 5)."""
    t0 = time.monotonic()
    r = httpx.get(url + "/api/health", timeout=5)
    assert r.status_code == 200, r.text
    return time.monotonic() - t0


def test_more_idle_connections_than_file_descriptors_do_not_lock_out_health(tmp_path: Path) -> None:
    config = {"server": {"header_timeout_s": 120}}  # idle ones stay: only admission makes room
    with (
        running_daemon(tmp_path, config=config, preexec_fn=low_file_limit) as d,
        open_sockets(d.port, FLOOD) as flood,
    ):
        m = re.search(r"msg=connections max=(\d+) open_files=(\d+)", d.log())
        assert m and int(m.group(2)) == DAEMON_FILES, d.log()
        cap = int(m.group(1))
        assert health_s(d.url) < 5, "while the flood is still being accepted"
        # the kernel hands the daemon the rest of the flood over a few seconds; once all are in,
        # every connection beyond the cap has closed an older idle one
        deadline = time.monotonic() + 30
        while (closed := sum(map(closed_by_peer, flood))) < FLOOD - cap:
            assert time.monotonic() < deadline, f"only {closed} idle connections were closed"
            time.sleep(0.2)
        assert health_s(d.url) < 5 and health_s(d.url) < 5
        assert not closed_by_peer(flood[-1]), "the newest idle ones are kept"
        assert d.proc.poll() is None
    assert "out of system resource" not in d.log() and "Too many open files" not in d.log()


def test_a_request_head_that_trickles_in_is_cut_off(tmp_path: Path) -> None:
    with (
        running_daemon(tmp_path, config={"server": {"header_timeout_s": 1}}) as d,
        socket.create_connection(("127.0.0.1", d.port), timeout=5) as s,
    ):
        s.sendall(b"GET /api/health HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        s.setblocking(False)
        t0 = time.monotonic()
        cut = False
        while time.monotonic() - t0 < 4:
            try:
                s.sendall(b"X-Slow: 1\r\n")  # every byte keeps uvicorn's keep-alive timer off
            except OSError:
                cut = True
                break
            if closed_by_peer(s):
                cut = True
                break
            time.sleep(0.2)
        assert cut, "a slow request head kept its connection"
        assert time.monotonic() - t0 < 3
        assert httpx.get(d.url + "/api/health", timeout=5).status_code == 200
