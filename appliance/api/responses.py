"""OpenAI's stateful Responses API: `POST /v1/responses` and `GET /v1/responses/{id}`.

The body is taken as a plain object (OpenAI clients send many optional fields); the service
checks the ones it uses and ignores the rest, like the other OpenAI-compatible routes.
"""

from __future__ import annotations

from typing import Any

from litestar import Controller, get, post
from litestar.di import NamedDependency

from appliance.services.container import Appliance


class ResponsesController(Controller):
    path = "/v1/responses"
    tags = ["openai"]

    @post("/", status_code=200)
    async def create(self, appliance: NamedDependency[Appliance], data: dict[str, Any]) -> dict[str, Any]:
        return await appliance.responses.create(data)

    @get("/{response_id:str}")
    async def retrieve(self, appliance: NamedDependency[Appliance], response_id: str) -> dict[str, Any]:
        return await appliance.responses.retrieve(response_id)
