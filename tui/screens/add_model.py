"""The dialog that adds a model from a GGUF path on the daemon's host (`POST /api/models`)."""

from __future__ import annotations

from dataclasses import dataclass

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, Select


@dataclass(frozen=True)
class AddModelRequest:
    path: str
    model_id: str | None
    kind: str


class AddModelScreen(ModalScreen[AddModelRequest | None]):
    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label("Add a model from a path on the daemon's host", classes="dialog-title")
            yield Input(placeholder="/path/to/model.gguf", id="add-path")
            yield Input(placeholder="id (optional; default: from the file name)", id="add-id")
            yield Select(
                [("chat", "chat"), ("embedding", "embedding")],
                value="chat",
                allow_blank=False,
                id="add-kind",
            )
            with Horizontal(classes="dialog-buttons"):
                yield Button("Add", variant="primary", id="add-ok")
                yield Button("Cancel", id="add-cancel")

    @on(Button.Pressed, "#add-ok")
    @on(Input.Submitted)
    def submit(self) -> None:
        path = self.query_one("#add-path", Input).value.strip()
        if not path:
            self.notify("Give the path of a GGUF file.", severity="warning")
            return
        model_id = self.query_one("#add-id", Input).value.strip() or None
        kind = str(self.query_one("#add-kind", Select).value)
        self.dismiss(AddModelRequest(path, model_id, kind))

    @on(Button.Pressed, "#add-cancel")
    def action_cancel(self) -> None:
        self.dismiss(None)
