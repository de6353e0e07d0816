"""The console application: five dashboard screens over one daemon connection.

`ApplianceApp` owns the `ApplianceClient`, follows the daemon's events stream in a worker and
forwards each event, and every change of the connection, to the dashboard screens that are
mounted. While the stream is down a heartbeat (`GET /api/status`) notices when the daemon is back;
the screens then reload and the banner clears. Keys 1-5 switch screens, ? shows every key, ctrl+p
opens the command palette (tui.commands).

Timings are constructor arguments so tests can make the console deterministic: `poll_s` (reload
while the stream is down), `sample_s` (gauges and rates on the Overview), `heartbeat_s`, and
`clock` (idle countdowns); `chat_max_tokens` bounds a direct chat's reply. The screens see them,
and the client, through `console_context`, a `tui.context.ConsoleContext`: they never import this module.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from typing import ClassVar

from textual import work
from textual.app import App
from textual.binding import Binding, BindingType
from textual.logging import TextualHandler

from appliance.client import ApplianceClient
from appliance.client.errors import ClientError
from appliance.client.records import ConnectionState, StreamStatus
from tui.commands import ApplianceCommands
from tui.context import ConsoleContext
from tui.messages import ConnectionChanged, DaemonEventReceived, DaemonReconnected, StreamChanged
from tui.screens.dashboard import DashboardScreen
from tui.screens.help import HelpScreen
from tui.screens.models import ModelsScreen
from tui.screens.overview import OverviewScreen
from tui.screens.sandboxes import SandboxesScreen
from tui.screens.sessions import SessionsScreen
from tui.screens.traces import TracesScreen

SCREEN_CLASSES: dict[str, type[DashboardScreen]] = {
    "overview": OverviewScreen,
    "models": ModelsScreen,
    "sessions": SessionsScreen,
    "sandboxes": SandboxesScreen,
    "traces": TracesScreen,
}


def run_console(url: str, token: str | None = None) -> int:
    """Run the console in this terminal until the user quits; the exit code of `appliance tui`."""
    # log lines written to the terminal would tear through the screen: send them to textual's log
    logging.getLogger().handlers[:] = [TextualHandler()]
    logging.getLogger("httpx").setLevel(logging.WARNING)
    app = ApplianceApp(ApplianceClient(url, token))
    app.run()
    return int(app.return_code or 0)


class ApplianceApp(App[None]):
    CSS_PATH = "app.tcss"
    TITLE = "Appliance"
    MODES: ClassVar[dict[str, Callable[[], DashboardScreen]]] = dict(SCREEN_CLASSES)  # type: ignore[assignment]
    DEFAULT_MODE = "overview"
    COMMANDS = App.COMMANDS | {ApplianceCommands}
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("1", "switch_mode('overview')", "Overview"),
        Binding("2", "switch_mode('models')", "Models"),
        Binding("3", "switch_mode('sessions')", "Sessions"),
        Binding("4", "switch_mode('sandboxes')", "Sandboxes"),
        Binding("5", "switch_mode('traces')", "Traces"),
        Binding("question_mark,f1", "help", "Help"),
        Binding("ctrl+p", "command_palette", "Commands", show=False),
        Binding("q", "quit", "Quit"),
    ]

    def __init__(
        self,
        client: ApplianceClient,
        *,
        poll_s: float = 10.0,
        sample_s: float = 2.0,
        heartbeat_s: float = 2.0,
        clock: Callable[[], float] = time.time,
        chat_max_tokens: int | None = None,
    ) -> None:
        super().__init__()
        self.client = client
        self._console = ConsoleContext(
            client, clock=clock, poll_s=poll_s, sample_s=sample_s, chat_max_tokens=chat_max_tokens
        )
        self.heartbeat_s = heartbeat_s
        self.stream_state = "connecting"
        self._was_down = False
        self.sub_title = client.url

    @property
    def console_context(self) -> ConsoleContext:
        """What the screens see of the console (`App.console` is Rich's, for drawing)."""
        return self._console

    # --- screens --------------------------------------------------------------------------------

    async def action_perform(self, mode: str, action: str, *args: object) -> None:
        """Switch to a screen and run one of its actions (the command palette's way in)."""
        await self.switch_mode(mode)
        call = f"{action}({', '.join(repr(a) for a in args)})" if args else action
        await self.run_action(call, self.screen)

    def action_help(self) -> None:
        sections: list[tuple[str, list[BindingType]]] = [("Everywhere", list(self.BINDINGS))]
        sections += [
            (cls.TITLE or mode, list(cls.__dict__["BINDINGS"]))
            for mode, cls in SCREEN_CLASSES.items()
            if "BINDINGS" in cls.__dict__
        ]
        self.push_screen(HelpScreen(sections))

    def action_reconnect(self) -> None:
        self.check_daemon()
        if not self._console.stream_live:
            self.follow_events()

    # --- the daemon connection ------------------------------------------------------------------

    def on_mount(self) -> None:
        self.client.on_connection = self._connection_noted
        self.follow_events()
        self.set_interval(self.heartbeat_s, self._heartbeat)

    def _connection_noted(self, state: ConnectionState) -> None:
        self.post_message(ConnectionChanged(state))

    async def on_unmount(self) -> None:
        await self.client.aclose()

    def _heartbeat(self) -> None:
        if not self.client.state.ok or not self._console.stream_live:
            self.check_daemon()

    @work(exclusive=True, group="heartbeat")
    async def check_daemon(self) -> None:
        # /api/status, not /api/health: health needs no token, so it cannot tell a refused token
        with contextlib.suppress(ClientError):  # the client notes the state; the banner says it
            await self.client.status()

    @work(exclusive=True, group="events")
    async def follow_events(self) -> None:
        async for item in self.client.events():
            if isinstance(item, StreamStatus):
                self.post_message(StreamChanged(item))
            else:
                self.post_message(DaemonEventReceived(item))

    def on_connection_changed(self, message: ConnectionChanged) -> None:
        state: ConnectionState = message.state
        self.sub_title = self.client.url if state.ok else f"{self.client.url} · {state.kind}"
        self._console.tell(lambda: ConnectionChanged(state))
        if not state.ok:
            self._was_down = True
        elif self._was_down:
            self._was_down = False
            self._console.tell(DaemonReconnected)
            if not self._console.stream_live and self.stream_state != "unsupported":
                self.follow_events()  # reconnect the stream now rather than after its backoff

    def on_stream_changed(self, message: StreamChanged) -> None:
        self.stream_state = message.status.state
        self._console.stream_live = message.status.state == "live"

    def on_daemon_event_received(self, message: DaemonEventReceived) -> None:
        self._console.recent_events.append(message.event)
        self._console.tell(lambda: DaemonEventReceived(message.event))
