"""The child of the HTTP kill -9 test: send turns to a daemon forever, acknowledging each message.

    python -m tests.integration.session_ack_writer DAEMON_URL

Speaks the protocol of store_ack_writer.py on stdout: first `SESSION <session id>`, then for
k = 1, 2, 3... `ACK <message id>` as soon as the turn stream's first event (the user's message,
sent by the daemon only after its commit) arrives for the message `durable message k`. It reads
each turn to its end before sending the next. When the daemon dies it exits quietly.
"""

from __future__ import annotations

import json
import sys

import httpx


def main(url: str) -> int:
    with httpx.Client(base_url=url, timeout=60) as c:
        agent = c.get("/api/agents/durability")
        if agent.status_code == 404:
            c.post(
                "/api/agents",
                json={
                    "name": "durability",
                    "model": "tiny",
                    "params": {"max_tokens": 2, "temperature": 0},
                },
            ).raise_for_status()
        session = c.post("/api/sessions", json={"agent": "durability"}).json()
        print(f"SESSION {session['id']}", flush=True)
        k = 0
        try:
            while True:
                k += 1
                with c.stream(
                    "POST",
                    f"/api/sessions/{session['id']}/messages",
                    json={"content": f"durable message {k}"},
                ) as r:
                    r.raise_for_status()
                    acked = False
                    for line in r.iter_lines():
                        if not acked and line.startswith("data: "):
                            message = json.loads(line[6:])["message"]
                            assert message["content"] == f"durable message {k}"
                            print(f"ACK {message['id']}", flush=True)
                            acked = True
        except (httpx.HTTPError, OSError):
            return 0  # the daemon is gone


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1]))
