"""Models: every profile and where it is in its lifecycle; load, unload, pin, add and pull.

Keys: l load, u unload, p pin or unpin, a add a model from a path on the daemon's host, f pull
one (from hf:, url: or ollama:). A state change arrives as a `model.state` event and shows at
once; the row's figures (memory, error) are then reloaded. A fetch or load in progress shows its
stage and share under the table; pulls show as progress bars (`model.pull` events) above it,
and a finished pull's model joins the table.
"""

from __future__ import annotations

from collections.abc import Iterable

from textual import work
from textual.binding import Binding
from textual.widget import Widget
from textual.widgets import DataTable

from appliance.client.records import DaemonEvent
from tui.messages import ModelChanged, ModelsLoaded
from tui.screens.add_model import AddModelRequest, AddModelScreen
from tui.screens.dashboard import DashboardScreen
from tui.screens.pull_model import PullModelRequest, PullModelScreen
from tui.widgets.model_detail import ModelDetail
from tui.widgets.model_table import ModelTable
from tui.widgets.pull_list import PullList


class ModelsScreen(DashboardScreen):
    TITLE = "Models"
    AUTO_FOCUS = "#models-table"
    BINDINGS = [
        Binding("l", "load", "Load"),
        Binding("u", "unload", "Unload"),
        Binding("p", "pin", "Pin/unpin"),
        Binding("a", "add", "Add"),
        Binding("f", "pull", "Pull"),
        Binding("r", "reload", "Reload", show=False),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.progress: dict[str, tuple[str, float | None]] = {}
        self.select_when_listed: str | None = None
        """A model named before the table listed it (from the palette): select it once listed."""

    def compose_body(self) -> Iterable[Widget]:
        yield PullList(id="pull-list")
        yield ModelTable(id="models-table")
        yield ModelDetail(id="model-detail")

    def on_mount(self) -> None:
        super().on_mount()
        self.query_one(ModelTable).border_title = "models"
        self.set_interval(1.0, lambda: self.query_one(ModelTable).tick(self.now()))

    def reload(self) -> None:
        self.fetch_models()

    @work(exclusive=True, group="models-list")
    async def fetch_models(self) -> None:
        models = await self.call("Listing models", self.client.models())
        if models is not None:
            self.post_message(ModelsLoaded(models))

    def on_models_loaded(self, message: ModelsLoaded) -> None:
        table = self.query_one(ModelTable)
        table.show_models(message.models, self.now(), {})
        if self.select_when_listed in table.models:
            table.move_cursor(row=table.get_row_index(self.select_when_listed))
            self.select_when_listed = None
        self._show_detail()

    def on_data_table_row_highlighted(self, _: DataTable.RowHighlighted) -> None:
        self._show_detail()

    def _show_detail(self) -> None:
        m = self.query_one(ModelTable).selected
        self.query_one(ModelDetail).show_model(m, self.progress.get(m.id) if m else None)

    # --- actions --------------------------------------------------------------------------------

    def _target(self, model_id: str | None) -> str | None:
        """The model an action is for: the one named (the palette), which then gets selected,
        else the selected row."""
        table = self.query_one(ModelTable)
        if model_id:
            if model_id in table.models:
                table.move_cursor(row=table.get_row_index(model_id))
            else:
                self.select_when_listed = model_id
            return model_id
        selected = self.query_one(ModelTable).selected
        if selected is None:
            self.notify("No model selected.", severity="warning")
            return None
        return selected.id

    def action_load(self, model_id: str | None = None) -> None:
        target = self._target(model_id)
        if target:
            self.query_one(ModelTable).set_state(target, "loading")
            self.change_model(target, "load")

    def action_unload(self, model_id: str | None = None) -> None:
        target = self._target(model_id)
        if target:
            self.change_model(target, "unload")

    def action_pin(self, model_id: str | None = None) -> None:
        target = self._target(model_id)
        if target:
            current = self.query_one(ModelTable).models.get(target)
            self.change_model(target, "unpin" if current is not None and current.pinned else "pin")

    def action_reload(self) -> None:
        self.reload()

    def action_add(self) -> None:
        def added(request: AddModelRequest | None) -> None:
            if request is not None:
                self.add_model(request)

        self.app.push_screen(AddModelScreen(), added)

    def action_pull(self) -> None:
        def chosen(request: PullModelRequest | None) -> None:
            if request is not None:
                self.pull_model(request)

        self.app.push_screen(PullModelScreen(), chosen)

    @work(group="model-ops")
    async def pull_model(self, request: PullModelRequest) -> None:
        pull = await self.call(
            "Pull model",
            self.client.pull_model(request.source, request.model_id, request.sha256),
        )
        if pull is not None:
            self.notify(f"Pulling {pull.model}.")

    @work(group="model-ops")
    async def change_model(self, model_id: str, op: str) -> None:
        match op:
            case "load":
                pending = self.client.load_model(model_id)
            case "unload":
                pending = self.client.unload_model(model_id)
            case "pin" | "unpin":
                pending = self.client.pin_model(model_id, op == "pin")
            case _:
                raise ValueError(f"unknown model operation {op!r}")
        model = await self.call(f"{op.capitalize()} {model_id}", pending)
        if model is not None:
            self.post_message(ModelChanged(model, op))
        else:
            self.fetch_models()

    @work(group="model-ops")
    async def add_model(self, request: AddModelRequest) -> None:
        model = await self.call(
            "Add model", self.client.add_model(request.path, request.model_id, request.kind)
        )
        if model is not None:
            self.post_message(ModelChanged(model, "add"))

    def on_model_changed(self, message: ModelChanged) -> None:
        if message.action == "add":
            self.notify(f"Added {message.model.id}.")
        self.fetch_models()

    def apply_event(self, event: DaemonEvent) -> None:
        model = event.data.get("model")
        if not isinstance(model, str):
            return
        if event.type == "model.pull":
            self.query_one(PullList).apply(event.data)
            if event.data.get("state") == "done":
                self.notify(f"Pulled {model}.")
                self.fetch_models()
        elif event.type == "model.fetch":
            fraction = event.data.get("fraction")
            self.progress[model] = (
                str(event.data.get("stage") or "fetching"),
                float(fraction) if isinstance(fraction, int | float) else None,
            )
            self._show_detail()
        elif event.type == "model.state" and isinstance(event.data.get("state"), str):
            self.query_one(ModelTable).set_state(model, event.data["state"])
            if event.data["state"] != "loading":
                self.progress.pop(model, None)
                self.fetch_models()
            self._show_detail()
        elif event.type == "model.evicted":
            self.fetch_models()
