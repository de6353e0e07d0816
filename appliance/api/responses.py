"""OpenAI's stateful Responses API: `POST /v1/responses` and `GET /v1/responses/{id}`.

The body is taken as a plain object (OpenAI clients send many optional fields); the service
checks the ones it uses and ignores the rest, like the other OpenAI-compatible routes. With
`stream: true` the answer comes as OpenAI's named server-sent events.
"""

from __future__ import annotations

from typing import Any

from litestar import Controller, Response, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody
from litestar.response import Stream

from appliance.api.sse import sse
from appliance.services.container import Appliance


class ResponsesController(Controller):
    path = "/v1/responses"
    tags = ["openai"]

    @post("/", status_code=200)
    async def create(self, appliance: NamedDependency[Appliance],
                     data: JSONBody[dict[str, Any]]) -> Response[Any] | Stream:
        if data.get("stream"):
            return sse(await appliance.responses.stream(data), done=False, named=True)
        return Response(await appliance.responses.create(data))

    @get("/{response_id:str}")
    async def retrieve(self, appliance: NamedDependency[Appliance],
                       response_id: FromPath[str]) -> dict[str, Any]:
        return await appliance.responses.retrieve(response_id)
