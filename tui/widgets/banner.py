"""The banner at the top of every screen while the daemon is unreachable or refuses the token.

It stays hidden while the console and the daemon get along; the app updates it on every
`ConnectionChanged`, so it clears by itself once the daemon answers again.
"""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

from appliance.client.records import ConnectionState


class ConnectionBanner(Static):
    """Shows why the daemon cannot be used right now, and that the console keeps retrying."""

    def show_state(self, state: ConnectionState) -> None:
        self.set_class(state.kind == "unreachable", "-unreachable")
        self.set_class(state.kind == "unauthorized", "-unauthorized")
        self.display = state.kind in ("unreachable", "unauthorized")
        if state.kind == "unreachable":
            text = Text.assemble(
                ("Daemon unreachable: ", "bold"),
                state.detail or state.url,
                (" Retrying.", "italic"),
            )
        elif state.kind == "unauthorized":
            text = Text.assemble(
                ("Token refused: ", "bold"), state.detail, (" Retrying.", "italic")
            )
        else:
            text = Text("")
        self.update(text)
