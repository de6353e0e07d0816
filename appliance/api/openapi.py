"""The OpenAPI document of the daemon, served at `GET /openapi.json` (behind the token check).

Litestar builds the document from the route handlers: their request structs and the structs they
return. Three things are added once, when the document is first asked for:

- the schemas of the appliance's own request and reply structs are msgspec's (the library that
  decodes them), so every range is as enforced (Litestar drops a bound of 0, such as
  temperature's minimum);

- every error the API sends is OpenAI's error body (appliance.api.errors), so each operation's
  400 and its `default` response (any other status: 401, 403, 404, 409, 413, 415, 5xx) have that
  schema, instead of Litestar's own validation-error shape;
- a handler that may answer with a stream (`Stream` in its return type: chat and completions
  with `stream: true`, responses, session turns, events) also answers `text/event-stream`.

Ollama's routes (appliance.api.ollama) differ in both: their errors are Ollama's body
(`{"error": "message"}`) and their streams are newline-delimited JSON (`application/x-ndjson`).
"""

from __future__ import annotations

import typing
from typing import Any

import msgspec
from litestar import Litestar, Request
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import JsonRenderPlugin
from litestar.response import Stream
from litestar.routes import HTTPRoute

from appliance import __version__
from appliance.api import ollama_replies, replies
from appliance.api.ollama import NDJSON, OllamaErrorBody
from appliance.api.ollama import PATHS as OLLAMA_PATHS
from appliance.api.replies import ErrorBody
from appliance.models.service import AddModelRequest
from appliance.openai import ollama as ollama_shapes
from appliance.openai import shapes
from appliance.sessions.service import CreateSessionRequest, ForkRequest, TurnRequest
from appliance.store import AgentPatch, AgentSpec

SCHEMA_STRUCTS: list[type[msgspec.Struct]] = [
    AddModelRequest,
    CreateSessionRequest,
    ForkRequest,
    TurnRequest,
    AgentSpec,
    AgentPatch,
]
"""Request structs of other routes whose schemas msgspec writes better than Litestar does."""

ERROR_REF = "#/components/schemas/ErrorBody"
OLLAMA_ERROR_REF = "#/components/schemas/OllamaErrorBody"
NDJSON_LINE: dict[str, Any] = {
    "description": "One line of the stream: a JSON object",
    "type": "object",
}
SSE_EVENT: dict[str, Any] = {
    "description": "One server-sent event; `data` is a JSON object, or `[DONE]` at the end of a chat stream",
    "type": "object",
    "properties": {
        "event": {"type": "string"},
        "data": {"type": "string"},
        "id": {"type": "string"},
    },
}
_enc = msgspec.json.Encoder()


def _error_response(description: str, ref: str = ERROR_REF) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": ref}}},
    }


def _is_stream(annotation: Any) -> bool:
    """A `Stream` or a subclass of it (`ServerSentEvent`, which every SSE route returns)."""
    return isinstance(annotation, type) and issubclass(annotation, Stream)


def _streams(app: Litestar) -> tuple[set[tuple[str, str]], set[tuple[str, str]]]:
    """(path, method) of the operations whose handler returns only a Stream, and of those that
    may return one."""
    only, some = set(), set()
    for route in app.routes:
        if not isinstance(route, HTTPRoute):
            continue
        for handler in route.route_handlers:
            returned = handler.parsed_fn_signature.return_type.annotation
            ops = {(route.path_format, m.lower()) for m in handler.http_methods}
            if _is_stream(returned):
                only |= ops
            if _is_stream(returned) or any(_is_stream(t) for t in typing.get_args(returned)):
                some |= ops
    return only, some


def _own_structs() -> list[type[msgspec.Struct]]:
    """The request and reply structs whose schemas msgspec writes (see `complete`)."""
    found: list[type[msgspec.Struct]] = [ErrorBody, OllamaErrorBody, *SCHEMA_STRUCTS]
    for module in (shapes, replies, ollama_shapes, ollama_replies):
        found += [
            v
            for v in vars(module).values()
            if isinstance(v, type)
            and issubclass(v, msgspec.Struct)
            and v.__module__ == module.__name__
            and not v.__name__.startswith("_")
        ]
    return found


def complete(document: dict[str, Any], app: Litestar) -> dict[str, Any]:
    """Add the error bodies and the event streams to Litestar's document (see the module doc)."""
    _, components = msgspec.json.schema_components(
        _own_structs(), ref_template="#/components/schemas/{name}"
    )
    document.setdefault("components", {}).setdefault("schemas", {}).update(components)
    only_streams, streams = _streams(app)
    for path, item in document.get("paths", {}).items():
        for method, op in item.items():
            if not isinstance(op, dict) or "responses" not in op:
                continue
            responses = op["responses"]
            if path in OLLAMA_PATHS:
                if "400" in responses:
                    responses["400"] = _error_response("The request is malformed", OLLAMA_ERROR_REF)
                responses["default"] = _error_response(
                    "An error, in Ollama's error body", OLLAMA_ERROR_REF
                )
                stream_type, event = NDJSON, NDJSON_LINE
            else:
                if "400" in responses:
                    responses["400"] = _error_response(
                        "The request is malformed; `error.param` names the field"
                    )
                responses["default"] = _error_response("An error, in OpenAI's error body")
                stream_type, event = "text/event-stream", SSE_EVENT
            ok = next((v for k, v in responses.items() if k.startswith("2")), None)
            if ok is not None and (path, method) in streams:
                if (path, method) in only_streams:
                    ok["content"] = {}
                ok.setdefault("content", {})[stream_type] = {"schema": event}
    return document


class ApplianceDocument(JsonRenderPlugin):
    """Litestar's JSON rendering of the document, completed once (see `complete`)."""

    def __init__(self) -> None:
        super().__init__(path="/")
        self._rendered: bytes | None = None

    def render(self, request: Request[Any, Any, Any], openapi_schema: dict[str, Any]) -> bytes:
        if self._rendered is None:
            self._rendered = _enc.encode(complete(openapi_schema, request.app))
        return self._rendered


def openapi_config() -> OpenAPIConfig:
    # the router sits at /openapi.json and the plugin at its root: one route, nothing else
    return OpenAPIConfig(
        title="Serverless AI Appliance",
        version=__version__,
        path="/openapi.json",
        render_plugins=[ApplianceDocument()],
    )
