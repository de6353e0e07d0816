"""The line where the user types a chat message; Enter sends it and clears the line."""

from __future__ import annotations

from dataclasses import dataclass

from textual.message import Message
from textual.widgets import Input


class ChatInput(Input):
    @dataclass
    class Sent(Message):
        text: str

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(placeholder="Type a message, Enter to send", id=id)

    async def action_submit(self) -> None:
        text = self.value.strip()
        if not text:
            return
        self.value = ""
        self.post_message(self.Sent(text))

    def busy(self, streaming: bool) -> None:
        """While a reply streams in, the line shows that and refuses a new message."""
        self.disabled = streaming
        self.placeholder = "Reply streaming in..." if streaming else "Type a message, Enter to send"
