"""Helpers for tests that talk to a daemon's agent and session API: send a turn, read its events."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import httpx


@dataclass
class TurnResult:
    status: int
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    body: Any = None
    """The JSON error body when the request was refused before streaming."""

    def named(self, name: str) -> list[dict[str, Any]]:
        return [d for e, d in self.events if e == name]

    @property
    def done(self) -> dict[str, Any]:
        (d,) = self.named("done")
        return d

    @property
    def text(self) -> str:
        """The content of the turn's last assistant message."""
        answers = [
            d["message"] for d in self.named("message") if d["message"]["role"] == "assistant"
        ]
        return str(answers[-1]["content"]) if answers else ""

    @property
    def names(self) -> list[str]:
        return [e for e, _ in self.events]


def send_turn(client: httpx.Client, session_id: str, content: str, **fields: Any) -> TurnResult:
    """POST a turn and read its whole SSE stream."""
    with client.stream(
        "POST", f"/api/sessions/{session_id}/messages", json={"content": content, **fields}
    ) as r:
        if r.status_code != 200:
            return TurnResult(status=r.status_code, body=json.loads(r.read() or b"null"))
        out = TurnResult(status=200)
        event = ""
        for line in r.iter_lines():
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: "):
                out.events.append((event, json.loads(line[6:])))
        return out


def new_session(client: httpx.Client, **body: Any) -> dict[str, Any]:
    r = client.post("/api/sessions", json=body)
    assert r.status_code == 201, r.text
    session: dict[str, Any] = r.json()
    return session
