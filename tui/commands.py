"""The command palette (ctrl+p): an entry for every action of the console.

Entries that act on a screen switch to it first, then run the screen's action, so the palette and
the keys do exactly the same thing. Per-model entries ("Load model tiny") are built from the
daemon's model list, read when the palette opens.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

from textual.command import DiscoveryHit, Hit, Hits, Provider

from appliance.client.errors import ClientError
from appliance.client.records import ModelInfo
from tui.context import ConsoleContext, HasConsole

SCREENS = (
    ("overview", "Overview"),
    ("models", "Models"),
    ("sessions", "Sessions"),
    ("sandboxes", "Sandboxes"),
    ("traces", "Traces"),
)

ACTIONS: tuple[tuple[str, str, str, str], ...] = (
    # (title, help, mode, screen action)
    ("Add a model from a path", "Register a GGUF file on the daemon's host", "models", "add"),
    ("Pull a model", "Download from hf:, url: or ollama: (Models screen: f)", "models", "pull"),
    ("Load the selected model", "Models screen: l", "models", "load"),
    ("Unload the selected model", "Models screen: u", "models", "unload"),
    ("Pin or unpin the selected model", "Models screen: p", "models", "pin"),
    ("Reload models", "Models screen: r", "models", "reload"),
    ("New session", "Start a session with an agent (Sessions: n)", "sessions", "new_session"),
    ("Fork the selected session", "Sessions: f", "sessions", "fork_session"),
    ("Delete the selected session", "Sessions: d", "sessions", "delete_session"),
    ("Chat: type a message", "Sessions: i", "sessions", "focus_input"),
    (
        "New sandbox",
        "Open a sandbox in the chosen language (Sandboxes: n)",
        "sandboxes",
        "new_sandbox",
    ),
    (
        "Run code",
        "In the selected sandbox, else one-shot (Sandboxes: ctrl+r)",
        "sandboxes",
        "run_code",
    ),
    ("Run code one-shot", "In a fresh sandbox (Sandboxes: ctrl+o)", "sandboxes", "run_one_shot"),
    ("Destroy the selected sandbox", "Sandboxes: x", "sandboxes", "destroy_sandbox"),
    ("Edit code", "Sandboxes: e", "sandboxes", "edit"),
    ("Filter traces", "Traces: /", "traces", "filter"),
    ("Reload traces", "Traces: r", "traces", "reload"),
)


class ApplianceCommands(Provider):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.models: list[ModelInfo] = []

    @property
    def console(self) -> ConsoleContext:
        if not isinstance(self.app, HasConsole):
            raise TypeError("the command palette needs an app with a console_context")
        return self.app.console_context

    async def startup(self) -> None:
        try:
            self.models = await self.console.client.models()
        except ClientError:
            self.models = []

    def _action(self, action: str, *args: object) -> Callable[[], Any]:
        """Run the app's action `action(*args)`, as a key binding would."""
        call = f"{action}({', '.join(repr(a) for a in args)})"
        return partial(self.app.run_action, call)

    def entries(self) -> list[tuple[str, str, Callable[[], Any]]]:
        act = self._action
        out: list[tuple[str, str, Callable[[], Any]]] = []
        for mode, title in SCREENS:
            out.append((f"Go to {title}", f"Show the {title} screen", act("switch_mode", mode)))
        out.append(("Help: keys", "Every key of the console", act("help")))
        out.append(("Reconnect now", "Try the daemon again without waiting", act("reconnect")))
        out.append(("Quit", "Leave the console (the daemon keeps running)", act("quit")))
        for title, help_text, mode, action in ACTIONS:
            out.append((title, help_text, act("perform", mode, action)))
        for m in self.models:
            out.append(
                (
                    f"Load model {m.id}",
                    f"{m.kind}, now {m.state}",
                    act("perform", "models", "load", m.id),
                )
            )
            out.append(
                (f"Unload model {m.id}", f"now {m.state}", act("perform", "models", "unload", m.id))
            )
            verb = "Unpin" if m.pinned else "Pin"
            out.append(
                (
                    f"{verb} model {m.id}",
                    "A pinned model is never unloaded for idleness",
                    act("perform", "models", "pin", m.id),
                )
            )
            out.append(
                (
                    f"Filter traces by model {m.id}",
                    "Traces of this model only",
                    act("perform", "traces", "filter", f"model:{m.id}"),
                )
            )
        return out

    async def discover(self) -> Hits:
        for title, help_text, command in self.entries():
            yield DiscoveryHit(title, command, help=help_text)

    async def search(self, query: str) -> Hits:
        matcher = self.matcher(query)
        for title, help_text, command in self.entries():
            score = matcher.match(title)
            if score > 0:
                yield Hit(score, matcher.highlight(title), command, text=title, help=help_text)
