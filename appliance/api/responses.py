"""OpenAI's stateful Responses API: `POST /v1/responses` and `GET /v1/responses/{id}`.

The body's types and ranges are checked against `ResponsesRequest` (appliance.openai.shapes);
its input items and tools by the service, which knows the kinds it supports. Unknown fields are
ignored, like on the other OpenAI-compatible routes. With `stream: true` the answer comes as
OpenAI's named server-sent events.
"""

from __future__ import annotations

from typing import Any

from litestar import Controller, Request, Response, get, post
from litestar.di import NamedDependency
from litestar.openapi import ResponseSpec
from litestar.params import FromPath, JSONBody
from litestar.response import ServerSentEvent

from appliance.api.disconnect import unless_disconnected
from appliance.api.replies import ResponseObject, reply
from appliance.api.sse import sse
from appliance.app import Appliance
from appliance.openai.shapes import ResponsesRequest


class ResponsesController(Controller):
    path = "/v1/responses"
    tags = ["openai"]

    @post(
        "/",
        status_code=200,
        responses={
            200: ResponseSpec(
                ResponseObject,
                description="The response; with `stream: true`, OpenAI's named server-sent events",
            )
        },
    )
    async def create(
        self,
        appliance: NamedDependency[Appliance],
        request: Request[Any, Any, Any],
        data: JSONBody[ResponsesRequest],
    ) -> Response[ResponseObject] | ServerSentEvent:
        body = data.to_params()
        if data.stream:
            return sse(await appliance.responses.stream(body), done=False, named=True)
        answer = await unless_disconnected(request, appliance.responses.create(body))
        return Response(reply(answer, ResponseObject))

    @get("/{response_id:str}")
    async def retrieve(
        self, appliance: NamedDependency[Appliance], response_id: FromPath[str]
    ) -> ResponseObject:
        return reply(await appliance.responses.retrieve(response_id), ResponseObject)
