"""Sandboxes: the live ones, and a scratch pad to run code in a chosen language.

Keys: n opens a sandbox in the chosen language, ctrl+r runs the code in the selected sandbox (or
one-shot, in a fresh sandbox, when none is selected), ctrl+o always runs one-shot, x destroys the
selected sandbox (confirmed), escape leaves the editor. The result shows status, exit code,
duration, peak memory, stdout and stderr.
"""

from __future__ import annotations

from collections.abc import Iterable

from textual import on, work
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.widget import Widget
from textual.widgets import Select, TextArea

from appliance.client.errors import NotAvailable
from appliance.client.records import DaemonEvent, Language
from tui.messages import RunFinished, SandboxChanged, SandboxesLoaded
from tui.screens.confirm import ConfirmScreen
from tui.screens.dashboard import DashboardScreen
from tui.widgets.notice import Notice
from tui.widgets.run_output import RunOutput
from tui.widgets.sandbox_table import SandboxTable

SAMPLE_CODE = 'print("hello from the sandbox")\n'


class SandboxesScreen(DashboardScreen):
    TITLE = "Sandboxes"
    AUTO_FOCUS = "#sandbox-table"
    BINDINGS = [
        Binding("ctrl+r", "run_code", "Run", priority=True),
        Binding("ctrl+o", "run_one_shot", "One-shot", priority=True),
        Binding("n", "new_sandbox", "New"),
        Binding("x", "destroy_sandbox", "Destroy"),
        Binding("e", "edit", "Edit"),
        Binding("escape", "leave_editor", "Leave editor", show=False),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.languages: list[Language] = []
        self.running = False
        self.select_after_load: str | None = None
        """A sandbox just opened: select it once the list shows it, so ctrl+r runs there."""

    def compose_body(self) -> Iterable[Widget]:
        yield Notice(id="sandboxes-notice")
        yield Horizontal(
            Vertical(
                Select[str]([], prompt="language", allow_blank=True, id="language"),
                SandboxTable(id="sandbox-table"),
                id="sandbox-side",
            ),
            Vertical(
                TextArea(SAMPLE_CODE, id="code", show_line_numbers=True, tab_behavior="indent"),
                RunOutput(id="run-output"),
                id="sandbox-main",
            ),
            id="sandboxes-body",
        )

    def on_mount(self) -> None:
        super().on_mount()
        self.query_one("#sandboxes-notice").display = False
        self.query_one(SandboxTable).border_title = "live sandboxes"
        self.query_one("#code", TextArea).border_title = "code"
        output = self.query_one(RunOutput)
        output.border_title = "output"
        output.show_message("ctrl+r runs the code (in the selected sandbox, else one-shot).")

    def reload(self) -> None:
        self.fetch_sandboxes(with_languages=not self.languages)

    @work(exclusive=True, group="sandboxes-list")
    async def fetch_sandboxes(self, with_languages: bool = False) -> None:
        languages: list[Language] = []
        if with_languages:
            languages = await self.call("Listing sandbox languages", self.client.languages()) or []
        sandboxes = await self.call("Listing sandboxes", self.client.sandboxes())
        if sandboxes is not None:
            self.post_message(SandboxesLoaded(sandboxes, languages))

    def on_sandboxes_loaded(self, message: SandboxesLoaded) -> None:
        table = self.query_one(SandboxTable)
        table.show_sandboxes(message.sandboxes)
        if self.select_after_load in table.sandboxes:
            table.select(self.select_after_load)
            self.select_after_load = None
        if message.languages:
            self.languages = message.languages
            select = self.query_one("#language", Select)
            current = select.value
            select.set_options(
                [
                    (lang.name if lang.available else f"{lang.name} (missing)", lang.name)
                    for lang in message.languages
                ]
            )
            names = [lang.name for lang in message.languages]
            if current in names:
                select.value = current
            elif "python" in names:
                select.value = "python"
            else:
                select.value = names[0]

    def show_not_available(self, action: str, error: NotAvailable) -> None:
        notice = self.query_one("#sandboxes-notice", Notice)
        notice.say("Sandboxes are not available on this daemon.", error.message)
        notice.display = True
        self.query_one("#sandboxes-body").display = False

    # --- running code ---------------------------------------------------------------------------

    def _language(self) -> str | None:
        value = self.query_one("#language", Select).value
        if not isinstance(value, str):
            self.notify("Choose a language first.", severity="warning")
            return None
        lang = next((x for x in self.languages if x.name == value), None)
        if lang is not None and not lang.available:
            self.notify(
                f"{value} is missing on the daemon's host: {lang.detail}", severity="warning"
            )
            return None
        return value

    def action_run_code(self) -> None:
        sandbox = self.query_one(SandboxTable).selected
        if sandbox is None:
            self.action_run_one_shot()
            return
        self._run(sandbox.id, None)

    def action_run_one_shot(self) -> None:
        language = self._language()
        if language is not None:
            self._run(None, language)

    def _run(self, sandbox_id: str | None, language: str | None) -> None:
        if self.running:
            self.notify("Code is still running.", severity="warning")
            return
        code = self.query_one("#code", TextArea).text
        where = sandbox_id or f"a one-shot {language} sandbox"
        self.running = True
        self.query_one(RunOutput).show_running(where)
        self.run_code(code, sandbox_id, language)

    @work(exclusive=True, group="sandbox-run")
    async def run_code(self, code: str, sandbox_id: str | None, language: str | None) -> None:
        if sandbox_id is not None:
            result = await self.call("Running code", self.client.exec_in_sandbox(sandbox_id, code))
        else:
            result = await self.call("Running code", self.client.run(language or "python", code))
        if result is not None:
            self.post_message(RunFinished(result, sandbox_id or "one-shot"))
        else:
            self.running = False
            self.query_one(RunOutput).show_message(
                "The run did not happen; see the message above.", "red"
            )

    def on_run_finished(self, message: RunFinished) -> None:
        self.running = False
        self.query_one(RunOutput).show_result(message.result, message.where)

    # --- sandbox lifecycle ----------------------------------------------------------------------

    def action_new_sandbox(self) -> None:
        language = self._language()
        if language is not None:
            self.create_sandbox(language)

    @work(group="sandbox-ops")
    async def create_sandbox(self, language: str) -> None:
        sandbox = await self.call("Opening a sandbox", self.client.create_sandbox(language))
        if sandbox is not None:
            self.post_message(SandboxChanged("created", sandbox))

    def action_destroy_sandbox(self) -> None:
        sandbox = self.query_one(SandboxTable).selected
        if sandbox is None:
            self.notify("Select a sandbox first.", severity="warning")
            return

        def answered(yes: bool | None) -> None:
            if yes:
                self.destroy_sandbox(sandbox.id)

        self.app.push_screen(
            ConfirmScreen(f"Destroy sandbox {sandbox.id} and its files?"), answered
        )

    @work(group="sandbox-ops")
    async def destroy_sandbox(self, sandbox_id: str) -> None:
        if await self.call("Destroying the sandbox", self._destroy(sandbox_id)):
            self.post_message(SandboxChanged("destroyed"))

    async def _destroy(self, sandbox_id: str) -> bool:
        await self.client.destroy_sandbox(sandbox_id)
        return True

    def on_sandbox_changed(self, message: SandboxChanged) -> None:
        self.notify(
            f"Sandbox {message.sandbox.id} {message.action}."
            if message.sandbox
            else f"Sandbox {message.action}."
        )
        self.fetch_sandboxes()
        if message.sandbox is not None:
            self.select_after_load = message.sandbox.id

    @on(Select.Changed, "#language")
    def language_changed(self) -> None:
        self.query_one(
            "#code", TextArea
        ).border_title = f"code · {self.query_one('#language', Select).value}"

    def action_edit(self) -> None:
        self.query_one("#code", TextArea).focus()

    def action_leave_editor(self) -> None:
        self.query_one(SandboxTable).focus()

    def apply_event(self, event: DaemonEvent) -> None:
        if event.type.startswith("sandbox."):
            self.fetch_sandboxes()
