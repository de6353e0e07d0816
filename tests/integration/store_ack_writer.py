"""The child of the kill -9 durability test: append messages forever, acknowledging each commit.

    python -m tests.integration.store_ack_writer STATE_DIR

Protocol on stdout (line-buffered and flushed, so a line the parent reads was written after the
commit it reports): first `SESSION <session id>`, then for k = 1, 2, 3... `ACK <message id>` once the
k-th message, whose content is `durable message k`, is committed. It never exits on its own; the
test kills it with SIGKILL. A later child that writes through the daemon's HTTP API only has to
speak the same protocol.
"""

from __future__ import annotations

import sys
from pathlib import Path

from appliance.store import AgentSpec, Store

PADDING = "x" * 3000
"""Makes each commit span several pages of the WAL, so a kill often lands inside one."""


def main(state_dir: Path) -> None:
    store = Store(state_dir)
    agent = store.agents.find("durability") or store.agents.create(
        AgentSpec(name="durability", model="none")
    )
    session = store.sessions.create(agent.id, title="kill -9")
    print(f"SESSION {session.id}", flush=True)
    k = 0
    while True:
        k += 1
        message = store.messages.append(
            session.id, "user", f"durable message {k}", meta={"padding": PADDING}
        )
        print(f"ACK {message.id}", flush=True)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
