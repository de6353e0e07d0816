"""Model lifecycle routes: list, load, unload, pin, add; and the hub's: pull, import, remove."""

from __future__ import annotations

from typing import Any

from litestar import Controller, delete, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, FromQuery, JSONBody

from appliance.app import Appliance
from appliance.models.hub import PullRequest, PullStatus
from appliance.models.imports import ImportRequest
from appliance.models.service import AddModelRequest


class ModelsController(Controller):
    path = "/api/models"
    tags = ["models"]

    @get("/")
    async def list_models(self, appliance: NamedDependency[Appliance]) -> list[dict[str, Any]]:
        return appliance.models.list()

    @post("/", status_code=201)
    async def add_model(
        self, appliance: NamedDependency[Appliance], data: JSONBody[AddModelRequest]
    ) -> dict[str, Any]:
        return await appliance.models.add(data.path, data.id, data.kind, data.replace)

    @post("/pull", status_code=202)
    async def pull_model(
        self, appliance: NamedDependency[Appliance], data: JSONBody[PullRequest]
    ) -> PullStatus:
        """Start a pull; progress comes as `model.pull` events and from GET /api/models/pulls."""
        return await appliance.hub.pull(data)

    @get("/pulls")
    async def list_pulls(self, appliance: NamedDependency[Appliance]) -> list[PullStatus]:
        return appliance.hub.pulls()

    @get("/pulls/{pull_id:str}")
    async def get_pull(
        self, appliance: NamedDependency[Appliance], pull_id: FromPath[str]
    ) -> PullStatus:
        return appliance.hub.get_pull(pull_id)

    @delete("/pulls/{pull_id:str}", status_code=200)
    async def cancel_pull(
        self, appliance: NamedDependency[Appliance], pull_id: FromPath[str]
    ) -> PullStatus:
        return await appliance.hub.cancel(pull_id)

    @post("/import", status_code=200)
    async def import_models(
        self, appliance: NamedDependency[Appliance], data: JSONBody[ImportRequest]
    ) -> dict[str, Any]:
        return await appliance.hub.import_models(data)

    @delete("/{model_id:str}", status_code=200)
    async def remove_model(
        self,
        appliance: NamedDependency[Appliance],
        model_id: FromPath[str],
        files: FromQuery[bool] = False,
    ) -> dict[str, Any]:
        return await appliance.hub.remove(model_id, files=files)

    @get("/{model_id:str}")
    async def get_model(
        self, appliance: NamedDependency[Appliance], model_id: FromPath[str]
    ) -> dict[str, Any]:
        return appliance.models.get(model_id)

    @post("/{model_id:str}/load", status_code=200)
    async def load(
        self,
        appliance: NamedDependency[Appliance],
        model_id: FromPath[str],
        keep_alive: FromQuery[float | None] = None,
    ) -> dict[str, Any]:
        return await appliance.models.load(model_id, keep_alive)

    @post("/{model_id:str}/unload", status_code=200)
    async def unload(
        self, appliance: NamedDependency[Appliance], model_id: FromPath[str]
    ) -> dict[str, Any]:
        return await appliance.models.unload(model_id)

    @post("/{model_id:str}/pin", status_code=200)
    async def pin(
        self,
        appliance: NamedDependency[Appliance],
        model_id: FromPath[str],
        pinned: FromQuery[bool] = True,
    ) -> dict[str, Any]:
        return await appliance.models.pin(model_id, pinned)
