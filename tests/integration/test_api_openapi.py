"""The OpenAPI document at GET /openapi.json: every route, real schemas, behind the token check.

The real app over a real store, in process (the document needs no model and no started daemon).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from appliance.api.app import create_app
from appliance.api.ollama import PATHS as OLLAMA_PATHS
from appliance.app import Appliance
from appliance.config import load_config


@pytest.fixture
async def appliance(tmp_path: Path) -> AsyncIterator[Appliance]:
    config = load_config(None, state_dir=str(tmp_path / "state"))
    appliance = await asyncio.to_thread(
        Appliance.from_config, config
    )  # the store opens off the loop
    yield appliance
    await appliance.store.aclose()


@pytest.fixture
def app(appliance: Appliance) -> Any:
    return create_app(appliance, manage_lifecycle=False)


async def _document(app: Any, headers: dict[str, str] | None = None) -> httpx.Response:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as c:
        return await c.get("/openapi.json", headers=headers)


def _resolve(doc: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    ref = schema.get("$ref", "")
    return doc["components"]["schemas"][ref.rsplit("/", 1)[-1]] if ref else schema


async def test_every_route_is_in_the_document_with_its_methods(app: Any) -> None:
    r = await _document(app)
    assert r.status_code == 200 and "openapi+json" in r.headers["content-type"]
    doc = r.json()
    assert doc["openapi"].startswith("3.") and doc["info"]["title"]
    for route in app.routes:
        if route.path_format.startswith("/openapi.json"):
            continue
        methods = {m.lower() for m in route.methods} - {"head", "options"}
        documented = set(doc["paths"].get(route.path_format, {}))
        assert methods <= documented, (route.path_format, methods, documented)


async def test_main_routes_have_request_and_response_schemas(app: Any) -> None:
    doc = (await _document(app)).json()
    paths = doc["paths"]
    typed = {
        ("/v1/chat/completions", "post"): ("ChatCompletionRequest", "ChatCompletion"),
        ("/v1/completions", "post"): ("CompletionRequest", "Completion"),
        ("/v1/embeddings", "post"): ("EmbeddingRequest", "EmbeddingList"),
        ("/v1/responses", "post"): ("ResponsesRequest", "ResponseObject"),
        ("/api/sessions", "post"): ("CreateSessionRequest", "Session"),
        ("/api/agents", "post"): ("AgentSpec", "Agent"),
    }
    for (path, method), (request, response) in typed.items():
        op = paths[path][method]
        body = op["requestBody"]["content"]["application/json"]["schema"]
        assert body["$ref"].endswith("/" + request), (path, body)
        ok = next(v for k, v in op["responses"].items() if k.startswith("2"))
        assert ok["content"]["application/json"]["schema"]["$ref"].endswith("/" + response), path
    assert paths["/v1/models"]["get"]["responses"]["200"]["content"]["application/json"]["schema"][
        "$ref"
    ].endswith("/ModelList")
    # the ranges are as enforced, a minimum of 0 included
    chat = doc["components"]["schemas"]["ChatCompletionRequest"]["properties"]
    temperature = next(s for s in chat["temperature"]["anyOf"] if s.get("type") == "number")
    assert (temperature["minimum"], temperature["maximum"]) == (0, 2)
    assert "messages" in doc["components"]["schemas"]["ChatCompletionRequest"]["required"]
    # a stream is documented as events
    stream = paths["/v1/chat/completions"]["post"]["responses"]["200"]["content"]
    assert set(stream) == {"application/json", "text/event-stream"}
    assert set(paths["/api/events"]["get"]["responses"]["200"]["content"]) == {"text/event-stream"}


async def test_every_error_is_documented_as_the_openai_error_body(app: Any) -> None:
    doc = (await _document(app)).json()
    error = doc["components"]["schemas"]["ErrorBody"]
    assert _resolve(doc, error["properties"]["error"])["required"] == [
        "message",
        "type",
        "param",
        "code",
    ]
    for path, item in doc["paths"].items():
        for method, op in item.items():
            body = "/OllamaErrorBody" if path in OLLAMA_PATHS else "/ErrorBody"
            for code in ("400", "default"):
                if code in op["responses"]:
                    schema = op["responses"][code]["content"]["application/json"]["schema"]
                    assert schema["$ref"].endswith(body), (method, path, code)
            assert "default" in op["responses"], (method, path)


async def test_ollamas_routes_are_documented_with_their_errors_and_streams(app: Any) -> None:
    doc = (await _document(app)).json()
    assert doc["components"]["schemas"]["OllamaErrorBody"]["required"] == ["error"]
    chat = doc["paths"]["/api/chat"]["post"]["responses"]
    ok = next(v for k, v in chat.items() if k.startswith("2"))
    assert set(ok["content"]) == {"application/json", "application/x-ndjson"}
    assert {"/api/tags", "/api/ps", "/api/show", "/api/embed"} <= set(doc["paths"])


async def test_the_document_is_behind_the_token_check(app: Any, appliance: Appliance) -> None:
    assert (await _document(app)).status_code == 200  # an open box: loopback, no tokens
    token = await appliance.store.run(appliance.store.tokens.create, "docs")
    refused = await _document(app)
    assert refused.status_code == 401 and refused.json()["error"]["code"] == "invalid_api_key"
    allowed = await _document(app, {"Authorization": f"Bearer {token.plain}"})
    assert allowed.status_code == 200 and "/v1/chat/completions" in allowed.json()["paths"]
