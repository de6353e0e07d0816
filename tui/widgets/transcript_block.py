"""One block of a transcript: a user or assistant message, a tool call, or a tool's result.

Each kind looks different (CSS classes by kind, in app.tcss). Assistant text is Markdown, so code
fences come out highlighted; a tool call shows its arguments highlighted as JSON, or, when they
carry code (a run_code tool), that code highlighted in its language; a tool result is boxed apart.
"""

from __future__ import annotations

import json
from typing import Any

from rich.console import Group, RenderableType
from rich.markdown import Markdown
from rich.syntax import Syntax
from rich.text import Text
from textual.widgets import Static

from appliance.client.records import ToolCall

SYNTAX_THEME = "monokai"


def _code_in(arguments: str) -> tuple[str, str] | None:
    """(code, language) when a tool call's JSON arguments carry code to run."""
    try:
        args: Any = json.loads(arguments)
    except ValueError:
        return None
    if isinstance(args, dict) and isinstance(args.get("code"), str):
        return args["code"], str(args.get("language") or "python")
    return None


class TranscriptBlock(Static):
    """A block of `kind` user | assistant | system | tool-call | tool-result | error."""

    def __init__(
        self, kind: str, text: str = "", *, title: str = "", tool_call: ToolCall | None = None
    ) -> None:
        super().__init__(classes=f"block -{kind}")
        self.kind = kind
        self.text = text
        self.block_title = title
        self.tool_call = tool_call

    def on_mount(self) -> None:
        self.border_title = self.block_title or self.kind
        self.update(self._render_body())

    def append(self, piece: str) -> None:
        """More of a streaming reply."""
        self.text += piece
        self.update(self._render_body())

    def _render_body(self) -> RenderableType:
        if self.kind == "assistant":
            return Markdown(self.text or "…", code_theme=SYNTAX_THEME)
        if self.kind == "tool-call" and self.tool_call is not None:
            code = _code_in(self.tool_call.arguments)
            if code is not None:
                source, language = code
                return Syntax(source, language, theme=SYNTAX_THEME, word_wrap=True)
            return Syntax(
                self._pretty_json(self.tool_call.arguments),
                "json",
                theme=SYNTAX_THEME,
                word_wrap=True,
            )
        if self.kind == "tool-result":
            return Group(Text(self.text or "(no output)"))
        return Text(self.text)

    @staticmethod
    def _pretty_json(text: str) -> str:
        try:
            return json.dumps(json.loads(text), indent=2, ensure_ascii=False)
        except ValueError:
            return text
