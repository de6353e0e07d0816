"""The dialog that starts a model pull (`POST /api/models/pull`): a source, an id, a sha256."""

from __future__ import annotations

from dataclasses import dataclass

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label


@dataclass(frozen=True)
class PullModelRequest:
    source: str
    model_id: str | None
    sha256: str | None


class PullModelScreen(ModalScreen[PullModelRequest | None]):
    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label("Pull a model into the daemon's model store", classes="dialog-title")
            yield Input(
                placeholder="hf:OWNER/REPO:QUANT, hf:OWNER/REPO/FILE.gguf, url:URL, ollama:NAME",
                id="pull-source",
            )
            yield Input(placeholder="id (optional; default: from the file name)", id="pull-id")
            yield Input(placeholder="sha256 (optional)", id="pull-sha256")
            with Horizontal(classes="dialog-buttons"):
                yield Button("Pull", variant="primary", id="pull-ok")
                yield Button("Cancel", id="pull-cancel")

    @on(Button.Pressed, "#pull-ok")
    @on(Input.Submitted)
    def submit(self) -> None:
        source = self.query_one("#pull-source", Input).value.strip()
        if not source:
            self.notify("Give a source to pull from.", severity="warning")
            return
        model_id = self.query_one("#pull-id", Input).value.strip() or None
        sha256 = self.query_one("#pull-sha256", Input).value.strip() or None
        self.dismiss(PullModelRequest(source, model_id, sha256))

    @on(Button.Pressed, "#pull-cancel")
    def action_cancel(self) -> None:
        self.dismiss(None)
