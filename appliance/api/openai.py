"""OpenAI-compatible routes: models, chat completions, completions, embeddings."""

from __future__ import annotations

from typing import Any

from litestar import Controller, Response, get, post
from litestar.di import NamedDependency
from litestar.params import JSONBody
from litestar.response import Stream

from appliance.api.schemas import ChatCompletionRequest, CompletionRequest, EmbeddingRequest
from appliance.api.sse import sse
from appliance.services.container import Appliance


class OpenAIController(Controller):
    path = "/v1"
    tags = ["openai"]

    @get("/models")
    async def list_models(self, appliance: NamedDependency[Appliance]) -> dict[str, Any]:
        return appliance.models.openai_list()

    @post("/chat/completions", status_code=200)
    async def chat_completions(self, appliance: NamedDependency[Appliance],
                               data: JSONBody[ChatCompletionRequest]) -> Response[Any] | Stream:
        params = data.to_params()
        if data.stream:
            return sse(await appliance.chat.chat_completion_stream(params))
        return Response(await appliance.chat.chat_completion(params))

    @post("/completions", status_code=200)
    async def completions(self, appliance: NamedDependency[Appliance],
                          data: JSONBody[CompletionRequest]) -> Response[Any] | Stream:
        params = data.to_params()
        if data.stream:
            return sse(await appliance.chat.completion_stream(params))
        return Response(await appliance.chat.completion(params))

    @post("/embeddings", status_code=200)
    async def embeddings(self, appliance: NamedDependency[Appliance],
                         data: JSONBody[EmbeddingRequest]) -> dict[str, Any]:
        return await appliance.chat.embeddings(data.to_params())
