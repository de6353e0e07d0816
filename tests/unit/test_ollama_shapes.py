"""Ollama's dialect translated: keep_alive durations, options, messages, and the error body.

Pure logic: the live client's view is tests/integration/test_ollama_api.py.
"""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from appliance.api.ollama import OllamaErrors
from appliance.errors import InvalidRequest
from appliance.models.profile import ModelProfile
from appliance.openai.ollama import (
    OllamaChatRequest,
    OllamaOptions,
    _chat_messages,
    _options,
    _response_format,
    keep_alive_seconds,
    model_id,
)

PROF = ModelProfile(id="m", source="/x.gguf", context_size=1024)


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (None, None),
        (300, 300.0),
        (0, 0.0),
        (-1, -1.0),
        (-5, -1.0),  # any negative: never unload, as in Ollama
        ("5m", 300.0),
        ("1h30m", 5400.0),
        ("300s", 300.0),
        ("1.5h", 5400.0),
        ("500ms", 0.5),
        ("0", 0.0),
        ("-1", -1.0),
        ("-1m", -1.0),
        ("120", 120.0),
    ],
)
def test_keep_alive_as_ollama_writes_it(value: Any, seconds: float | None) -> None:
    assert keep_alive_seconds(value) == seconds


@pytest.mark.parametrize("value", ["soon", "5 m", "5mm", "m", "", "1e999"])
def test_keep_alive_that_is_no_duration_is_refused(value: str) -> None:
    with pytest.raises(InvalidRequest) as exc:
        keep_alive_seconds(value)
    assert exc.value.param == "keep_alive"


def test_model_names_drop_the_default_tag_and_map_to_the_id_a_pull_gives() -> None:
    assert model_id("smollm2:latest") == "smollm2"
    assert model_id("smollm2-135m-instruct") == "smollm2-135m-instruct"  # an id stays itself
    assert model_id("smollm2:7b") == "smollm2-7b"  # what /api/pull of smollm2:7b registers
    assert model_id("hf.co/Org/Repo:Q4_K_M") == "hf.co-org-repo-q4_k_m"


def test_options_map_to_the_services_names() -> None:
    opts = OllamaOptions(num_predict=20, temperature=0.5, top_k=4, stop=["\n"], num_ctx=512)
    assert _options(opts, PROF) == {
        "max_tokens": 20,
        "temperature": 0.5,
        "top_k": 4,
        "stop": ["\n"],
    }
    assert _options(OllamaOptions(num_predict=-1), PROF) == {"max_tokens": 1024}
    for bad in (OllamaOptions(num_ctx=4096), OllamaOptions(num_predict=0)):
        with pytest.raises(InvalidRequest):
            _options(bad, PROF)


def test_options_out_of_range_fail_while_decoding() -> None:
    for body in (
        b'{"model": "m", "options": {"temperature": 3}}',
        b'{"model": "m", "options": {"top_p": 0}}',
        b'{"model": "m", "options": {"num_predict": -3}}',
        b'{"model": "m", "options": {"seed": "x"}}',
    ):
        with pytest.raises(msgspec.ValidationError):
            msgspec.json.decode(body, type=OllamaChatRequest)
    unknown = msgspec.json.decode(
        b'{"model": "m", "options": {"num_gpu": 99, "mirostat": 2}}', type=OllamaChatRequest
    )
    assert unknown.options == OllamaOptions(), "load-time options are accepted and ignored"


def test_format_becomes_a_response_format() -> None:
    assert _response_format(None) is None and _response_format("") is None
    assert _response_format("json") == {"type": "json_object"}
    schema = {"type": "object"}
    assert _response_format(schema) == {
        "type": "json_schema",
        "json_schema": {"name": "format", "schema": schema},
    }


def test_tool_calls_and_results_become_openai_messages() -> None:
    req = msgspec.json.decode(
        b'{"model": "m", "messages": ['
        b'{"role": "assistant", "content": "", "tool_calls": [{"function": '
        b'{"name": "f", "arguments": {"a": 1}}}]},'
        b'{"role": "tool", "content": "2", "tool_name": "f"}]}',
        type=OllamaChatRequest,
    )
    call, result = _chat_messages(req.messages, PROF)
    assert call["tool_calls"][0]["function"] == {"name": "f", "arguments": '{"a": 1}'}
    assert result == {"role": "tool", "content": "2", "tool_call_id": "f", "name": "f"}
    with pytest.raises(InvalidRequest) as exc:
        _chat_messages(
            msgspec.json.decode(
                b'{"model": "m", "messages": [{"role": "user", "images": ["AA=="]}]}',
                type=OllamaChatRequest,
            ).messages,
            PROF,
        )
    assert "image" in exc.value.message and exc.value.param == "messages[0].images"


async def _call(app: Any, path: str) -> tuple[int, bytes]:
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b""}

    await OllamaErrors(app)({"type": "http", "path": path}, receive, send)
    status = sent[0]["status"]
    headers = dict(sent[0]["headers"])
    body = b"".join(m.get("body", b"") for m in sent[1:])
    assert int(headers[b"content-length"]) == len(body)
    return status, body


def _openai_error(status: int) -> Any:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        body = b'{"error": {"message": "no", "type": "t", "param": null, "code": "c"}}'
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-length", str(len(body)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": body[:10], "more_body": True})
        await send({"type": "http.response.body", "body": body[10:]})

    return app


async def test_errors_on_ollamas_paths_get_ollamas_body() -> None:
    assert await _call(_openai_error(401), "/api/chat") == (401, b'{"error":"no"}')
    status, body = await _call(_openai_error(413), "/v1/chat/completions")
    assert status == 413 and b'"code": "c"' in body, "other routes keep OpenAI's body"
