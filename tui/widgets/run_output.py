"""The outcome of running code in a sandbox: status, exit code, duration, memory, stdout, stderr.

It scrolls, since a program's output can be longer than the pane."""

from __future__ import annotations

from rich.console import Group
from rich.text import Text
from textual.app import ComposeResult
from textual.containers import VerticalScroll
from textual.widgets import Static

from appliance.client.records import RunResult
from tui import format as fmt


def summary(result: RunResult, where: str) -> Text:
    if result.exit_code is not None:
        exit_part = f"exit {result.exit_code}"
    else:
        exit_part = f"signal {result.signal}" if result.signal is not None else "no exit code"
    return Text.assemble(
        (result.status.upper(), fmt.RUN_STATUS_STYLES.get(result.status, "bold")),
        f"  {exit_part}  {fmt.duration_ms(result.duration_ms)}",
        f"  peak {result.peak_memory_mb:.0f} MiB" if result.peak_memory_mb else "",
        (f"  ({result.phase})" if result.phase != "run" else "", "dim"),
        (f"  in {where}", "dim"),
    )


class RunOutput(VerticalScroll):
    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.plain = ""
        """What the pane shows, as plain text."""

    def compose(self) -> ComposeResult:
        yield Static(id="run-text")

    def _show(self, *parts: Text) -> None:
        self.plain = "\n".join(p.plain for p in parts)
        self.query_one("#run-text", Static).update(Group(*parts) if len(parts) > 1 else parts[0])
        self.scroll_home(animate=False)

    def show_result(self, result: RunResult, where: str) -> None:
        parts: list[Text] = [summary(result, where)]
        if result.reason:
            parts.append(Text(result.reason, style="yellow"))
        parts.append(Text("stdout", style="bold dim"))
        parts.append(Text(result.stdout or "(empty)", style="" if result.stdout else "dim"))
        if result.stdout_truncated:
            parts.append(Text("[stdout truncated]", style="yellow"))
        if result.stderr or result.stderr_truncated:
            parts.append(Text("stderr", style="bold dim"))
            parts.append(Text(result.stderr, style="red"))
            if result.stderr_truncated:
                parts.append(Text("[stderr truncated]", style="yellow"))
        self._show(*parts)

    def show_running(self, where: str) -> None:
        self._show(Text(f"running in {where}…", style="italic cyan"))

    def show_message(self, text: str, style: str = "dim") -> None:
        self._show(Text(text, style=style))
