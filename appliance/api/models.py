"""Model lifecycle routes: list, load, unload, pin, add."""

from __future__ import annotations

from typing import Any

from litestar import Controller, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, FromQuery, JSONBody

from appliance.app import Appliance
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
