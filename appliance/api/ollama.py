"""Ollama-compatible routes: `/api/version|tags|ps|show|chat|generate|embed|embeddings`.

So that Ollama's clients work unmodified with `OLLAMA_HOST=http://127.0.0.1:8420`. The bodies are
typed in appliance.openai.ollama, whose OllamaService translates them onto the same ChatService
the OpenAI routes use; these handlers only pick the answer's framing. `/api/chat` and
`/api/generate` stream newline-delimited JSON unless `stream: false`; an error after the stream
started is its last line, `{"error": "..."}`, which Ollama's clients raise.

None of these names is one of the appliance's own `/api/*` routes (models, sessions, agents,
sandboxes, ...). `/api/pull` and `/api/delete` are the model hub's (appliance.openai.ollama_hub);
push, create and copy answer 501 with what to use instead.

Errors on these paths are Ollama's body, `{"error": "message"}`, with the same statuses as
everywhere: `OllamaErrors` rewrites the OpenAI body that the browser boundary, the token check
and the exception handlers send (`{"error": {"message": ...}}`), so every refusal, a 413 before
routing or a 401 included, reaches an Ollama client in the shape it parses.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import msgspec
from litestar import Controller, Request, Response, delete, get, post
from litestar.di import NamedDependency, Provide
from litestar.params import JSONBody
from litestar.response import Stream

from appliance.api.disconnect import unless_disconnected
from appliance.api.ollama_replies import (
    OllamaChatReply,
    OllamaEmbeddingsReply,
    OllamaEmbedReply,
    OllamaGenerateReply,
    OllamaModelList,
    OllamaRunningList,
    OllamaShow,
    OllamaVersion,
)
from appliance.api.replies import reply
from appliance.app import Appliance
from appliance.errors import ApplianceError
from appliance.openai.ollama import (
    OllamaChatRequest,
    OllamaEmbeddingsRequest,
    OllamaEmbedRequest,
    OllamaGenerateRequest,
    OllamaModelRequest,
    OllamaService,
)
from appliance.openai.ollama_hub import OllamaHub, OllamaPullRequest

log = logging.getLogger("appliance.api")
_enc = msgspec.json.Encoder()

ASGIApp = Any
NDJSON = "application/x-ndjson"
PATHS = frozenset(
    f"/api/{name}"
    for name in (
        *("version", "tags", "ps", "show", "chat", "generate", "embed", "embeddings"),
        *("pull", "push", "create", "copy", "delete"),
    )
)
"""Ollama's routes, which answer errors in Ollama's body."""


class OllamaErrorBody(msgspec.Struct, kw_only=True):
    """Ollama's error body: every error response of Ollama's routes has this shape."""

    error: str
    """What went wrong and what to do next."""


def provide_ollama(appliance: NamedDependency[Appliance]) -> OllamaService:
    return OllamaService(appliance.chat, appliance.catalog, appliance.scheduler)


async def _lines(parts: AsyncIterator[dict[str, Any]]) -> AsyncIterator[bytes]:
    try:
        async for part in parts:
            yield _enc.encode(part) + b"\n"
    except Exception as exc:  # the status line is gone: the error becomes the last line
        if not isinstance(exc, ApplianceError):
            log.exception("an Ollama stream failed", exc_info=exc)
            exc = ApplianceError(f"internal error: {exc!r}. See the daemon log.")
        yield _enc.encode({"error": exc.message}) + b"\n"


def ndjson(parts: AsyncIterator[dict[str, Any]]) -> Stream:
    """Ollama's stream: one JSON object per line, as each part comes. A client that leaves
    cancels the stream, which stops its generation (as for the SSE routes)."""
    return Stream(_lines(parts), media_type=NDJSON, headers={"X-Accel-Buffering": "no"})


class OllamaController(Controller):
    path = "/api"
    tags = ["ollama"]
    dependencies = {"ollama": Provide(provide_ollama, sync_to_thread=False)}

    @get("/version")
    async def version(self, ollama: NamedDependency[OllamaService]) -> OllamaVersion:
        return reply(ollama.version(), OllamaVersion)

    @get("/tags")
    async def list_models(self, ollama: NamedDependency[OllamaService]) -> OllamaModelList:
        return reply(ollama.tags(), OllamaModelList)

    @get("/ps")
    async def running_models(self, ollama: NamedDependency[OllamaService]) -> OllamaRunningList:
        return reply(ollama.ps(), OllamaRunningList)

    @post("/show", status_code=200)
    async def show(
        self, ollama: NamedDependency[OllamaService], data: JSONBody[OllamaModelRequest]
    ) -> OllamaShow:
        return reply(ollama.show(data), OllamaShow)

    @post("/chat", status_code=200)
    async def chat(
        self,
        ollama: NamedDependency[OllamaService],
        request: Request[Any, Any, Any],
        data: JSONBody[OllamaChatRequest],
    ) -> Response[OllamaChatReply] | Stream:
        prof, params = ollama.chat_params(data)
        if not data.messages:
            loaded = await ollama.load_only(prof, data.keep_alive, "message")
            return Response(reply(loaded, OllamaChatReply))
        gen = await ollama.start("chat", params)
        if data.stream:
            return ndjson(ollama.parts(gen, "message"))
        answer = await unless_disconnected(request, ollama.answer(gen, "message"))
        return Response(reply(answer, OllamaChatReply))

    @post("/generate", status_code=200)
    async def generate(
        self,
        ollama: NamedDependency[OllamaService],
        request: Request[Any, Any, Any],
        data: JSONBody[OllamaGenerateRequest],
    ) -> Response[OllamaGenerateReply] | Stream:
        prof, op, params = ollama.generate_params(data)
        if not data.prompt:
            loaded = await ollama.load_only(prof, data.keep_alive, "response")
            return Response(reply(loaded, OllamaGenerateReply))
        gen = await ollama.start(op, params)
        if data.stream:
            return ndjson(ollama.parts(gen, "response"))
        answer = await unless_disconnected(request, ollama.answer(gen, "response"))
        return Response(reply(answer, OllamaGenerateReply))

    @post("/embed", status_code=200)
    async def embed(
        self,
        ollama: NamedDependency[OllamaService],
        request: Request[Any, Any, Any],
        data: JSONBody[OllamaEmbedRequest],
    ) -> OllamaEmbedReply:
        return reply(await unless_disconnected(request, ollama.embed(data)), OllamaEmbedReply)

    @post("/embeddings", status_code=200)
    async def embeddings(
        self,
        ollama: NamedDependency[OllamaService],
        request: Request[Any, Any, Any],
        data: JSONBody[OllamaEmbeddingsRequest],
    ) -> OllamaEmbeddingsReply:
        answer = await unless_disconnected(request, ollama.embeddings(data))
        return reply(answer, OllamaEmbeddingsReply)

    @post("/pull", status_code=200)
    async def pull(
        self, appliance: NamedDependency[Appliance], data: JSONBody[OllamaPullRequest]
    ) -> Response[dict[str, Any]] | Stream:
        """A hub pull (appliance.openai.ollama_hub), its progress as Ollama's NDJSON."""
        parts = await OllamaHub(appliance.hub).pull(data)
        if data.stream:
            return ndjson(parts)
        lines = [part async for part in parts]  # a failure raises: Ollama's error body
        return Response(lines[-1])

    @post("/push", status_code=200)
    async def push(self) -> None:
        raise OllamaService.unsupported("push")

    @post("/create", status_code=200)
    async def create(self) -> None:
        raise OllamaService.unsupported("create")

    @post("/copy", status_code=200)
    async def copy(self) -> None:
        raise OllamaService.unsupported("copy")

    @delete("/delete", status_code=200)
    async def delete_model(
        self, appliance: NamedDependency[Appliance], data: JSONBody[OllamaModelRequest]
    ) -> None:
        await OllamaHub(appliance.hub).delete(data)


def _ollama_body(body: bytes) -> bytes:
    """OpenAI's error body as Ollama's; anything else as it is."""
    try:
        doc = msgspec.json.decode(body)
    except msgspec.DecodeError:
        return body
    error = doc.get("error") if isinstance(doc, dict) else None
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        return _enc.encode({"error": error["message"]})
    return body


class OllamaErrors:
    """Plain ASGI: on Ollama's paths, an error answer's OpenAI body becomes Ollama's."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope.get("path") not in PATHS:
            await self.app(scope, receive, send)
            return
        start: dict[str, Any] | None = None
        held: list[bytes] = []

        async def reshaping_send(message: Any) -> None:
            nonlocal start
            if message["type"] == "http.response.start" and message["status"] >= 400:
                start = message  # held until the (small) error body is complete
                return
            if start is None or message["type"] != "http.response.body":
                await send(message)
                return
            held.append(message.get("body", b""))
            if message.get("more_body", False):
                return
            body = _ollama_body(b"".join(held))
            headers = [(k, v) for k, v in start.get("headers", ()) if k != b"content-length"]
            headers.append((b"content-length", str(len(body)).encode()))
            await send({**start, "headers": headers})
            await send({"type": "http.response.body", "body": body})

        await self.app(scope, receive, reshaping_send)
