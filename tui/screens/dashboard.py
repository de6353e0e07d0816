"""What the five dashboard screens share: header, connection banner, footer, and the plumbing of
daemon calls.

A screen starts its calls in workers through `call` (which turns a failure into a `CallFailed`
message instead of an exception in the worker), reloads when the daemon comes back, applies the
events the app forwards to it, and polls only while the events stream is not live.
"""

from __future__ import annotations

from collections.abc import Awaitable, Iterable
from typing import TypeVar, cast

from textual.app import ComposeResult
from textual.screen import Screen
from textual.widget import Widget
from textual.widgets import Footer, Header

from appliance.client import ApplianceClient
from appliance.client.errors import ClientError, DaemonUnauthorized, DaemonUnreachable, NotAvailable
from appliance.client.records import DaemonEvent
from tui.context import ConsoleContext, HasConsole
from tui.messages import CallFailed, ConnectionChanged, DaemonEventReceived, DaemonReconnected
from tui.widgets.banner import ConnectionBanner

T = TypeVar("T")


class DashboardScreen(Screen[None]):
    """Base of Overview, Models, Sessions, Sandboxes and Traces."""

    def compose(self) -> ComposeResult:
        yield Header(show_clock=False)
        yield ConnectionBanner(id="banner")
        yield from self.compose_body()
        yield Footer()

    def compose_body(self) -> Iterable[Widget]:
        """The widgets between the banner and the footer. Every screen gives its own (a test checks
        that each one in the app does); the base alone shows only the frame."""
        return ()

    @property
    def context(self) -> ConsoleContext:
        """What this screen may use of the console (see tui.context)."""
        return cast(HasConsole, self.app).console_context

    @property
    def client(self) -> ApplianceClient:
        return self.context.client

    def now(self) -> float:
        return self.context.clock()

    def on_mount(self) -> None:
        self.context.subscribe(self)
        self.query_one(ConnectionBanner).show_state(self.client.state)
        self.reload()
        self.set_interval(self.context.poll_s, self._poll_if_stream_down)

    def on_unmount(self) -> None:
        self.context.unsubscribe(self)

    def on_screen_resume(self) -> None:
        self.query_one(ConnectionBanner).show_state(self.client.state)

    def _poll_if_stream_down(self) -> None:
        if not self.context.stream_live:
            self.reload()

    # --- what each screen provides --------------------------------------------------------------

    def reload(self) -> None:
        """Start the workers that fetch everything this screen shows."""

    def apply_event(self, event: DaemonEvent) -> None:
        """Bring the screen up to date with one event of the daemon."""

    def show_not_available(self, action: str, error: NotAvailable) -> None:
        """A route this screen needs does not exist on this daemon; say so where it would show."""
        self.notify(error.message, title=action, severity="warning")

    # --- plumbing -------------------------------------------------------------------------------

    async def call(self, action: str, pending: Awaitable[T]) -> T | None:
        """Await a client call; on failure post `CallFailed(action, error)` and give None."""
        try:
            return await pending
        except ClientError as exc:
            self.post_message(CallFailed(action, exc))
            return None

    def on_call_failed(self, message: CallFailed) -> None:
        error = message.error
        if isinstance(error, NotAvailable):
            self.show_not_available(message.action, error)
        elif not isinstance(error, DaemonUnreachable | DaemonUnauthorized):  # the banner says those
            self.notify(
                error.message, title=f"{message.action} failed", severity="error", timeout=10
            )

    def on_connection_changed(self, message: ConnectionChanged) -> None:
        self.query_one(ConnectionBanner).show_state(message.state)

    def on_daemon_reconnected(self, _: DaemonReconnected) -> None:
        self.reload()

    def on_daemon_event_received(self, message: DaemonEventReceived) -> None:
        self.apply_event(message.event)
