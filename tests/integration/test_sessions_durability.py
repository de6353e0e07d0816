"""kill -9 of the daemon while a client sends turns loses no acknowledged message.

A child process (session_ack_writer) sends turns over HTTP and prints `ACK <id>` when the turn
stream's first event, the user's committed message, arrives. The test SIGKILLs the daemon after
some ACKs, then checks the database the daemon left: integrity_check is ok and every acknowledged
message is there, in order. A daemon started again on the same state directory serves the session.
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
from tests.integration.daemon import REPO, running_daemon, start_daemon
from tests.integration.sessions_client import send_turn

DEADLINE_S = 120.0
"""Generous bound so a stalled child fails the test instead of hanging it (not a timing check)."""


def read_acks(proc: subprocess.Popen[bytes], want: int) -> tuple[str, list[str], bytes]:
    assert proc.stdout is not None
    session, acked, buffer = "", [], b""
    deadline = time.monotonic() + DEADLINE_S
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        while len(acked) < want:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                pytest.fail(
                    f"the writer stopped or stalled after {len(acked)} ACKs: {proc.stderr.read().decode()}"
                )  # type: ignore[union-attr]
            if not sel.select(timeout=1.0):
                continue
            buffer += os.read(proc.stdout.fileno(), 65536)
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                kind, _, value = line.decode().partition(" ")
                if kind == "SESSION":
                    session = value
                elif kind == "ACK":
                    acked.append(value)
    return session, acked, buffer


@pytest.mark.parametrize("acks_before_kill", [1, 25])
def test_acknowledged_turn_messages_survive_kill_9_of_the_daemon(
    tiny_model_path: Path, tmp_path: Path, acks_before_kill: int
) -> None:
    models = {"tiny": {"source": str(tiny_model_path), "context_size": 512, "parallel": 1}}
    daemon = start_daemon(tmp_path, models=models)
    writer = subprocess.Popen(
        [sys.executable, "-m", "tests.integration.session_ack_writer", daemon.url],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        session, acked, buffer = read_acks(writer, acks_before_kill)
        daemon.proc.send_signal(signal.SIGKILL)
        daemon.proc.wait(30)
        rest, _ = writer.communicate(timeout=60)
    finally:
        writer.kill()
        daemon.stop()
    for line in (buffer + rest).split(b"\n"):  # ACKs printed before the kill landed count too
        kind, _, value = line.decode().partition(" ")
        if kind == "ACK" and value:
            acked.append(value)
    assert daemon.proc.returncode == -signal.SIGKILL

    with Store(daemon.state_dir) as store:
        assert store.db.integrity_check() == "ok"
        seqs = []
        for k, message_id in enumerate(acked, start=1):
            m = store.messages.get(message_id)
            assert (m.session_id, m.role, m.content) == (session, "user", f"durable message {k}")
            seqs.append(m.seq)
        assert seqs == sorted(seqs)
        users = [m for m in store.messages.transcript(session) if m.role == "user"]
        assert len(acked) <= len(users) <= len(acked) + 1, (
            "at most the message in flight at the kill"
        )

    with running_daemon(tmp_path, models=models) as again, again.http() as c:
        t = send_turn(c, session, "after the crash")
        assert t.names[-1] == "done", t.events[-1:]
        contents = [m["content"] for m in c.get(f"/api/sessions/{session}").json()["messages"]]
        assert f"durable message {len(acked)}" in contents and contents[-2] == "after the crash"
