"""A session's transcript, and the turn that is streaming into it.

`show_entries` lays out a stored transcript; `start_turn` and `apply` grow it live from the events
of `POST /api/sessions/{id}/messages` (or from a plain streamed chat completion): tokens extend the
assistant's block, a tool call or result gets its own block, an error a red one.
"""

from __future__ import annotations

from textual.containers import VerticalScroll

from appliance.client.records import ToolCall, TranscriptEntry, TurnEvent
from tui.widgets.transcript_block import TranscriptBlock


class TranscriptView(VerticalScroll):
    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self._reply: TranscriptBlock | None = None

    def show_entries(self, entries: list[TranscriptEntry]) -> None:
        self.remove_children()
        self._reply = None
        blocks: list[TranscriptBlock] = []
        for e in entries:
            if e.role == "tool":
                blocks.append(
                    TranscriptBlock(
                        "tool-result",
                        e.content,
                        title=f"tool result · {e.name or e.tool_call_id or ''}",
                    )
                )
                continue
            if e.role in ("user", "assistant", "system") and (e.content or not e.tool_calls):
                blocks.append(
                    TranscriptBlock(e.role, e.content, title="you" if e.role == "user" else e.role)
                )
            for call in e.tool_calls:
                blocks.append(self._call_block(call))
        if blocks:
            self.mount_all(blocks)
        self.scroll_end(animate=False)

    def start_turn(self, text: str) -> None:
        self._reply = None
        self._add(TranscriptBlock("user", text, title="you"))

    def apply(self, event: TurnEvent) -> None:
        """One event of the turn under way."""
        if event.kind == "token":
            if self._reply is None:
                self._reply = self._add(TranscriptBlock("assistant", "", title="assistant"))
            self._reply.append(event.text)
        elif event.kind == "tool_call" and event.tool_call is not None:
            self._reply = None
            self._add(self._call_block(event.tool_call))
        elif event.kind == "tool_result":
            self._reply = None
            name = str(event.data.get("name") or event.data.get("tool") or "")
            self._add(
                TranscriptBlock(
                    "tool-result", event.text, title=f"tool result · {name}".rstrip(" ·")
                )
            )
        elif (
            event.kind == "message"
            and event.data.get("role") == "assistant"
            and event.text
            and not event.data.get("tool_calls")
        ):
            # the stored assistant message is authoritative over the tokens seen so far (the user's
            # message shows already, tool calls and results come as their own events)
            if self._reply is None:
                self._reply = self._add(TranscriptBlock("assistant", "", title="assistant"))
            self._reply.text = ""
            self._reply.append(event.text)
        elif event.kind == "error":
            self._reply = None
            self._add(TranscriptBlock("error", event.text, title="error"))
        elif event.kind == "done":
            self._reply = None
        self.scroll_end(animate=False)

    @property
    def reply_text(self) -> str:
        """The assistant text of the turn under way (empty before the first token)."""
        return self._reply.text if self._reply is not None else ""

    def _add(self, block: TranscriptBlock) -> TranscriptBlock:
        self.mount(block)
        return block

    @staticmethod
    def _call_block(call: ToolCall) -> TranscriptBlock:
        return TranscriptBlock(
            "tool-call", call.arguments, title=f"tool call · {call.name}", tool_call=call
        )
