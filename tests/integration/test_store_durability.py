"""kill -9 while writing loses nothing that was acknowledged and leaves the database intact.

A child process appends messages and prints `ACK <id>` after each commit (the protocol of
tests/integration/store_ack_writer.py). The test SIGKILLs it at some point, reads every ACK it
managed to print, reopens the database and checks that each acknowledged message is there, in
order, with its content, and that `PRAGMA integrity_check` says ok. The daemon version of this test
is the same check with a child that writes through the HTTP API.
"""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from appliance.store import Store

REPO = Path(__file__).resolve().parents[2]
DEADLINE_S = 120.0
"""Generous bound so a broken child fails the test instead of hanging it (not a timing check)."""


def kill_after_acks(cmd: list[str], acks_before_kill: int) -> tuple[str, list[str], int]:
    """Run the child, SIGKILL it right after its n-th ACK; return (session id, ACKed ids, rc)."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None
    session_id = ""
    acked: list[str] = []
    buffer = b""
    deadline = time.monotonic() + DEADLINE_S
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        while len(acked) < acks_before_kill:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                _, err = proc.communicate()
                pytest.fail(f"child stopped or stalled after {len(acked)} ACKs: {err.decode()}")
            if not sel.select(timeout=1.0):
                continue
            chunk = os.read(proc.stdout.fileno(), 65536)
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                kind, _, value = line.decode().partition(" ")
                if kind == "SESSION":
                    session_id = value
                elif kind == "ACK":
                    acked.append(value)
    proc.send_signal(signal.SIGKILL)
    rest, _ = proc.communicate()
    # ACKs already in the pipe were printed after their commits: they count too.
    for line in (buffer + rest).split(b"\n"):
        kind, _, value = line.decode().partition(" ")
        if kind == "ACK" and value:
            acked.append(value)
    return session_id, acked, proc.returncode


@pytest.mark.parametrize("acks_before_kill", [1, 40, 150])
def test_acknowledged_messages_survive_sigkill(tmp_path: Path, acks_before_kill: int) -> None:
    state = tmp_path / "state"
    cmd = [sys.executable, "-m", "tests.integration.store_ack_writer", str(state)]
    session_id, acked, rc = kill_after_acks(cmd, acks_before_kill)
    assert rc == -signal.SIGKILL
    assert session_id and len(acked) >= acks_before_kill

    with Store(state) as store:
        assert store.db.integrity_check() == "ok"
        for k, message_id in enumerate(acked, start=1):
            message = store.messages.get(message_id)
            assert message.session_id == session_id
            assert message.seq == k
            assert message.content == f"durable message {k}"
        transcript = store.messages.transcript(session_id)
        # Nothing beyond the acknowledged ones except at most the one in flight at the kill,
        # and no holes: the k-th message is at seq k.
        assert len(acked) <= len(transcript) <= len(acked) + 1
        assert [m.seq for m in transcript] == list(range(1, len(transcript) + 1))
        # The store stays writable after the crash.
        assert (
            store.messages.append(session_id, "user", "after the crash").seq == len(transcript) + 1
        )
