"""A dashboard screen needs only a `ConsoleContext`, not the console app: it mounts in a bare
`App` that has one, loads its data through the context's client and follows the context's clock."""

from __future__ import annotations

from textual.app import App

from appliance.client import ApplianceClient
from tests.tui.conftest import until
from tests.tui.fake_daemon import NOW, FakeDaemon
from tui.context import ConsoleContext
from tui.screens.models import ModelsScreen
from tui.widgets.model_table import ModelTable


class BareApp(App[None]):
    def __init__(self, context: ConsoleContext) -> None:
        super().__init__()
        self._given = context

    @property
    def console_context(self) -> ConsoleContext:
        return self._given

    def on_mount(self) -> None:
        self.push_screen(ModelsScreen())


async def test_the_models_screen_runs_on_a_context_alone() -> None:
    client = ApplianceClient("http://appliance.test:8420", transport=FakeDaemon().transport())
    context = ConsoleContext(client, clock=lambda: NOW, poll_s=3600)
    app = BareApp(context)
    async with app.run_test(size=(140, 40)) as pilot:
        await until(pilot, lambda: isinstance(app.screen, ModelsScreen), "the models screen")
        screen = app.screen
        assert isinstance(screen, ModelsScreen)
        table = screen.query_one(ModelTable)
        await until(pilot, lambda: "tiny" in table.models, "the models from the context's client")
        assert context.subscribers == [screen], "the screen subscribed to the context"
        assert screen.now() == NOW
    await client.aclose()
