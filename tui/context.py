"""`ConsoleContext`: what a dashboard screen may use of the console, and nothing else.

The app builds one (the client, the clock, the poll and sample intervals, the reply limit of a
direct chat, the events seen lately and whether the events stream is live) and keeps it up to
date; a screen reads it as `self.context` and subscribes to it to be sent connection changes and
daemon events. Screens never import the app (an import-linter contract checks it), so a screen
can be mounted in any `App` that has a `console_context`.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from textual.message import Message
from textual.message_pump import MessagePump

from appliance.client import ApplianceClient
from appliance.client.records import DaemonEvent


@dataclass
class ConsoleContext:
    client: ApplianceClient
    clock: Callable[[], float] = time.time
    """Wall-clock time, for idle countdowns (tests pass a fixed one)."""
    poll_s: float = 10.0
    """How often a screen reloads while the events stream is down."""
    sample_s: float = 2.0
    """How often the Overview samples its gauges and rates."""
    chat_max_tokens: int | None = None
    """Limit of a direct chat's reply (None: the daemon's and the model's own limits)."""
    stream_live: bool = False
    """Whether `GET /api/events` is flowing (screens poll only while it is not)."""
    recent_events: deque[DaemonEvent] = field(default_factory=lambda: deque(maxlen=100))
    subscribers: list[MessagePump] = field(default_factory=list)

    def subscribe(self, screen: MessagePump) -> None:
        """A screen mounted: it is sent connection changes and events from now on."""
        if screen not in self.subscribers:
            self.subscribers.append(screen)

    def unsubscribe(self, screen: MessagePump) -> None:
        if screen in self.subscribers:
            self.subscribers.remove(screen)

    def tell(self, message: Callable[[], Message]) -> None:
        """Post a fresh message (from `message`) to every subscribed screen."""
        for screen in self.subscribers:
            screen.post_message(message())


@runtime_checkable
class HasConsole(Protocol):
    """An app that serves dashboard screens."""

    @property
    def console_context(self) -> ConsoleContext: ...
