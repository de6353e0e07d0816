"""OpenAI-compatible routes: models, chat completions, completions, embeddings.

A body is checked against its struct (appliance.openai.shapes) before the handler runs; the answer
is built as its struct (chat, completions, embeddings: by ChatService; the model list: here, with
appliance.api.replies), so both match the OpenAPI document. With
`stream: true` chat and completions answer as server-sent events instead (appliance.api.sse).
"""

from __future__ import annotations

from typing import Any

from litestar import Controller, Request, Response, get, post
from litestar.di import NamedDependency
from litestar.openapi import ResponseSpec
from litestar.params import JSONBody
from litestar.response import ServerSentEvent

from appliance.api.disconnect import unless_disconnected
from appliance.api.replies import ChatCompletion, Completion, EmbeddingList, ModelList, reply
from appliance.api.sse import sse
from appliance.app import Appliance
from appliance.openai.shapes import ChatCompletionRequest, CompletionRequest, EmbeddingRequest

STREAMED = "; with `stream: true`, server-sent events of chunks ending with `data: [DONE]`"


class OpenAIController(Controller):
    path = "/v1"
    tags = ["openai"]

    @get("/models")
    async def list_models(self, appliance: NamedDependency[Appliance]) -> ModelList:
        return reply(appliance.models.openai_list(), ModelList)

    @post(
        "/chat/completions",
        status_code=200,
        responses={200: ResponseSpec(ChatCompletion, description="The completion" + STREAMED)},
    )
    async def chat_completions(
        self,
        appliance: NamedDependency[Appliance],
        request: Request[Any, Any, Any],
        data: JSONBody[ChatCompletionRequest],
    ) -> Response[ChatCompletion] | ServerSentEvent:
        params = data.to_params()
        if data.stream:
            return sse(await appliance.chat.chat_completion_stream(params))
        answer = await unless_disconnected(request, appliance.chat.chat_completion(params))
        return Response(answer)

    @post(
        "/completions",
        status_code=200,
        responses={200: ResponseSpec(Completion, description="The completion" + STREAMED)},
    )
    async def completions(
        self,
        appliance: NamedDependency[Appliance],
        request: Request[Any, Any, Any],
        data: JSONBody[CompletionRequest],
    ) -> Response[Completion] | ServerSentEvent:
        params = data.to_params()
        if data.stream:
            return sse(await appliance.chat.completion_stream(params))
        answer = await unless_disconnected(request, appliance.chat.completion(params))
        return Response(answer)

    @post("/embeddings", status_code=200)
    async def embeddings(
        self,
        appliance: NamedDependency[Appliance],
        request: Request[Any, Any, Any],
        data: JSONBody[EmbeddingRequest],
    ) -> EmbeddingList:
        return await unless_disconnected(request, appliance.chat.embeddings(data.to_params()))
