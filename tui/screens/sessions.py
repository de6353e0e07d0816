"""Sessions: browse agents and their sessions, read a transcript, chat with the reply streaming in.

Keys: n new session (pick an agent), f fork the selected session, d delete it (both confirmed),
enter on a session opens its transcript, i or tab to the message line, escape back to the tree.

On a daemon without the sessions API the screen says so and offers a direct chat with a model
instead (`POST /v1/chat/completions`, streamed), its history kept in the console only.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from textual import on, work
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.widget import Widget
from textual.widgets import OptionList, Tree
from textual.widgets.option_list import Option

from appliance.client.errors import ClientError, NotAvailable
from appliance.client.records import Agent, DaemonEvent, Session, TurnEvent
from tui.messages import (
    AgentsLoaded,
    ModelsLoaded,
    SessionChanged,
    TranscriptLoaded,
    TurnEventReceived,
)
from tui.screens.confirm import ConfirmScreen
from tui.screens.dashboard import DashboardScreen
from tui.screens.pick import PickScreen
from tui.widgets.chat_input import ChatInput
from tui.widgets.notice import Notice
from tui.widgets.session_tree import SessionTree
from tui.widgets.transcript import TranscriptView


class SessionsScreen(DashboardScreen):
    TITLE = "Sessions"
    AUTO_FOCUS = "#session-tree"
    BINDINGS = [
        Binding("n", "new_session", "New"),
        Binding("f", "fork_session", "Fork"),
        Binding("d", "delete_session", "Delete"),
        Binding("i", "focus_input", "Type"),
        Binding("escape", "focus_list", "List", show=False),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.agents: list[Agent] = []
        self.chat_models: list[str] = []
        """Models a session can have without an agent."""
        self.open_session: Session | None = None
        self.direct_model: str | None = None
        """Set when the daemon has no sessions API: chat goes straight to this model."""
        self.direct_history: list[dict[str, Any]] = []
        self.sessions_missing = False
        self.streaming = False

    def compose_body(self) -> Iterable[Widget]:
        yield Horizontal(
            Vertical(
                Notice(id="sessions-notice"),
                SessionTree(id="session-tree"),
                OptionList(id="direct-models"),
                id="sessions-side",
            ),
            Vertical(TranscriptView(id="transcript"), ChatInput(id="chat-input"), id="chat-pane"),
        )

    def on_mount(self) -> None:
        super().on_mount()
        self.query_one("#sessions-notice").display = False
        self.query_one("#direct-models").display = False
        self.query_one(SessionTree).border_title = "agents & sessions"
        self.query_one(TranscriptView).border_title = "transcript"

    def reload(self) -> None:
        if self.sessions_missing:
            self.fetch_chat_models()
        else:
            self.fetch_agents()

    # --- loading --------------------------------------------------------------------------------

    @work(exclusive=True, group="sessions-list")
    async def fetch_agents(self) -> None:
        agents = await self.call("Listing agents", self.client.agents())
        if agents is None:
            return
        sessions = await self.call("Listing sessions", self.client.sessions())
        if sessions is None:
            return
        models = await self.call("Listing models", self.client.models()) or []
        self.post_message(AgentsLoaded(agents, sessions, [m for m in models if m.kind == "chat"]))

    @work(exclusive=True, group="sessions-models")
    async def fetch_chat_models(self) -> None:
        models = await self.call("Listing models", self.client.models())
        if models is not None:
            self.post_message(ModelsLoaded([m for m in models if m.kind == "chat"]))

    @work(exclusive=True, group="transcript")
    async def fetch_transcript(self, session_id: str) -> None:
        entries = await self.call("Reading the transcript", self.client.transcript(session_id))
        if entries is not None:
            self.post_message(TranscriptLoaded(session_id, entries))

    def on_agents_loaded(self, message: AgentsLoaded) -> None:
        self.agents = message.agents
        self.chat_models = [m.id for m in message.models]
        self.query_one(SessionTree).show_agents(message.agents, message.sessions)
        if self.open_session and not any(s.id == self.open_session.id for s in message.sessions):
            self.open_session = None
            self.query_one(TranscriptView).show_entries([])
        elif self.open_session is not None:
            self.query_one(SessionTree).select_session(self.open_session.id)

    def on_models_loaded(self, message: ModelsLoaded) -> None:
        options = self.query_one("#direct-models", OptionList)
        options.clear_options()
        options.add_options([Option(m.id, id=m.id) for m in message.models])
        if self.direct_model is None and message.models:
            # a model already in memory answers at once; one whose file is missing would first fetch
            ranked = sorted(message.models, key=lambda m: (not m.resident, m.fetched is False))
            self.direct_model = ranked[0].id
        if self.direct_model:
            options.highlighted = next(
                (i for i, m in enumerate(message.models) if m.id == self.direct_model), 0
            )
        self._title_transcript()

    def on_transcript_loaded(self, message: TranscriptLoaded) -> None:
        if self.open_session and self.open_session.id == message.session_id:
            self.query_one(TranscriptView).show_entries(message.entries)

    def show_not_available(self, action: str, error: NotAvailable) -> None:
        if action in ("Listing agents", "Listing sessions") and not self.sessions_missing:
            self.sessions_missing = True
            notice = self.query_one("#sessions-notice", Notice)
            notice.say(
                "Sessions are not available on this daemon.", "Chat directly with a model instead:"
            )
            notice.display = True
            self.query_one(SessionTree).display = False
            self.query_one("#direct-models").display = True
            self.fetch_chat_models()
        else:
            super().show_not_available(action, error)

    # --- choosing -------------------------------------------------------------------------------

    @on(Tree.NodeSelected)
    def open_selected(self, event: Tree.NodeSelected[Agent | Session]) -> None:
        if isinstance(event.node.data, Session):
            self.open(event.node.data)

    def open(self, session: Session) -> None:
        self.open_session = session
        self._title_transcript()
        self.query_one(TranscriptView).show_entries([])
        self.fetch_transcript(session.id)

    @on(OptionList.OptionSelected, "#direct-models")
    def choose_model(self, event: OptionList.OptionSelected) -> None:
        self.direct_model = event.option.id
        self.direct_history = []
        self.query_one(TranscriptView).show_entries([])
        self._title_transcript()
        self.query_one(ChatInput).focus()

    def _title_transcript(self) -> None:
        view = self.query_one(TranscriptView)
        if self.open_session is not None:
            view.border_title = f"session {self.open_session.label}"
        elif self.direct_model is not None and self.sessions_missing:
            view.border_title = f"direct chat · {self.direct_model}"
        else:
            view.border_title = "transcript"

    def action_focus_input(self) -> None:
        self.query_one(ChatInput).focus()

    def action_focus_list(self) -> None:
        (
            self.query_one("#direct-models")
            if self.sessions_missing
            else self.query_one(SessionTree)
        ).focus()

    # --- chatting -------------------------------------------------------------------------------

    @on(ChatInput.Sent)
    def send(self, message: ChatInput.Sent) -> None:
        if self.streaming:
            return
        if self.sessions_missing:
            if self.direct_model is None:
                self.notify("No chat model on this daemon to talk to.", severity="warning")
                return
            self._begin(message.text)
            self.chat_direct(self.direct_model, message.text)
            return
        if self.open_session is None:
            agent = self.query_one(SessionTree).selected_agent
            if agent is None:
                self.notify(
                    "Select a session, or an agent to start one with (n).", severity="warning"
                )
                return
            self._begin(message.text)
            self.start_and_send(agent.id, message.text)
            return
        self._begin(message.text)
        self.send_turn(self.open_session.id, message.text)

    def _begin(self, text: str) -> None:
        self.streaming = True
        self.query_one(ChatInput).busy(True)
        self.query_one(TranscriptView).start_turn(text)

    @work(exclusive=True, group="turn")
    async def send_turn(self, session_id: str, text: str) -> None:
        await self._stream_turn(session_id, text)

    @work(exclusive=True, group="turn")
    async def start_and_send(self, agent_id: str, text: str) -> None:
        session = await self.call(
            "Creating a session", self.client.create_session(agent=agent_id, title=text[:40])
        )
        if session is None:
            self.post_message(TurnEventReceived(TurnEvent("error", "could not create a session")))
            return
        self.post_message(SessionChanged("created", session))
        await self._stream_turn(session.id, text)

    async def _stream_turn(self, session_id: str, text: str) -> None:
        try:
            async for event in self.client.send_message(
                session_id, text, max_tokens=self.context.chat_max_tokens
            ):
                self.post_message(TurnEventReceived(event))
        except ClientError as exc:  # shown in the transcript, where the reply would have been
            self.post_message(TurnEventReceived(TurnEvent("error", exc.message)))
        self.post_message(TurnEventReceived(TurnEvent("done")))

    @work(exclusive=True, group="turn")
    async def chat_direct(self, model: str, text: str) -> None:
        self.direct_history.append({"role": "user", "content": text})
        reply: list[str] = []

        try:
            async for piece in self.client.chat_stream(
                model, list(self.direct_history), max_tokens=self.context.chat_max_tokens
            ):
                reply.append(piece)
                self.post_message(TurnEventReceived(TurnEvent("token", piece)))
        except ClientError as exc:
            self.post_message(TurnEventReceived(TurnEvent("error", exc.message)))
        self.direct_history.append({"role": "assistant", "content": "".join(reply)})
        self.post_message(TurnEventReceived(TurnEvent("done")))

    def on_turn_event_received(self, message: TurnEventReceived) -> None:
        self.query_one(TranscriptView).apply(message.event)
        if message.event.kind in ("done", "error") and self.streaming:
            self.streaming = False
            chat = self.query_one(ChatInput)
            chat.busy(False)
            chat.focus()
            if not self.sessions_missing:
                self.fetch_agents()

    # --- session actions ------------------------------------------------------------------------

    def action_new_session(self) -> None:
        if self.sessions_missing:
            self.notify("Sessions are not available on this daemon.", severity="warning")
            return
        choices = [
            (f"agent:{a.id}", f"agent {a.name}" + (f" ({a.model})" if a.model else ""))
            for a in self.agents
        ]
        choices += [(f"model:{m}", f"model {m}, no agent") for m in self.chat_models]
        if not choices:
            self.notify("No agents or chat models on this daemon yet.", severity="warning")
            return

        def picked(choice: str | None) -> None:
            if choice:
                self.create_session(choice)

        self.app.push_screen(PickScreen("New session with which agent or model?", choices), picked)

    @work(group="session-ops")
    async def create_session(self, choice: str) -> None:
        """`choice` is "agent:ID" or "model:ID"."""
        kind, _, ref = choice.partition(":")
        pending = (
            self.client.create_session(agent=ref)
            if kind == "agent"
            else self.client.create_session(model=ref)
        )
        session = await self.call("Creating a session", pending)
        if session is not None:
            self.post_message(SessionChanged("created", session))

    def _selected(self) -> Session | None:
        session = self.query_one(SessionTree).selected_session or self.open_session
        if session is None:
            self.notify("Select a session first.", severity="warning")
        return session

    def action_fork_session(self) -> None:
        session = self._selected()
        if session is None:
            return

        def answered(yes: bool | None) -> None:
            if yes:
                self.fork_session(session.id)

        self.app.push_screen(ConfirmScreen(f"Fork session {session.label}?"), answered)

    def action_delete_session(self) -> None:
        session = self._selected()
        if session is None:
            return

        def answered(yes: bool | None) -> None:
            if yes:
                self.delete_session(session.id)

        self.app.push_screen(
            ConfirmScreen(f"Delete session {session.label}, its transcript and its files?"),
            answered,
        )

    @work(group="session-ops")
    async def fork_session(self, session_id: str) -> None:
        fork = await self.call("Forking the session", self.client.fork_session(session_id))
        if fork is not None:
            self.post_message(SessionChanged("forked", fork))

    @work(group="session-ops")
    async def delete_session(self, session_id: str) -> None:
        done = await self.call("Deleting the session", self._delete(session_id))
        if done:
            if self.open_session and self.open_session.id == session_id:
                self.open_session = None
                self.query_one(TranscriptView).show_entries([])
                self._title_transcript()
            self.post_message(SessionChanged("deleted"))

    async def _delete(self, session_id: str) -> bool:
        await self.client.delete_session(session_id)
        return True

    def on_session_changed(self, message: SessionChanged) -> None:
        if message.session is not None:
            self.open_session = message.session
            self._title_transcript()
            if message.action == "forked":
                self.fetch_transcript(message.session.id)
            self.notify(f"Session {message.session.label} {message.action}.")
        else:
            self.notify(f"Session {message.action}.")
        self.fetch_agents()

    def apply_event(self, event: DaemonEvent) -> None:
        if event.type.startswith("session.") and not self.streaming:
            self.fetch_agents()
