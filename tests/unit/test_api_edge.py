"""The checks at the edge, without a daemon: request structs, the 400's `param`, reply limits.

A one-route Litestar app with the appliance's error handlers stands in for the API, so each
malformed body is decoded exactly as the daemon decodes it.
"""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from litestar import Litestar, post
from litestar.params import JSONBody
from litestar.testing import TestClient

from appliance.api.errors import EXCEPTION_HANDLERS
from appliance.api.replies import ChatCompletion, reply
from appliance.errors import ApplianceError, InvalidRequest
from appliance.models.profile import ModelProfile
from appliance.openai.chat import bounded
from appliance.openai.shapes import ChatCompletionRequest, ResponsesRequest
from appliance.sampling import fold_seed


@post("/chat")
async def chat(data: JSONBody[ChatCompletionRequest]) -> dict[str, Any]:
    return data.to_params()


@post("/responses")
async def responses(data: JSONBody[ResponsesRequest]) -> dict[str, Any]:
    return data.to_params()


@pytest.fixture(scope="module")
def client() -> Any:
    with TestClient(Litestar([chat, responses], exception_handlers=EXCEPTION_HANDLERS)) as c:
        yield c


USER = {"role": "user", "content": "hi"}


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": [USER]}, "model"),
        ({"model": "m"}, "messages"),
        (
            {
                "model": "m",
                "messages": [
                    USER,
                    {"role": "assistant", "tool_calls": [{"id": "c", "type": "function"}]},
                ],
            },
            "messages[1].tool_calls[0].function",
        ),
        (
            {
                "model": "m",
                "messages": [
                    USER,
                    {
                        "role": "assistant",
                        "tool_calls": [
                            {
                                "id": "c",
                                "type": "function",
                                "function": {"name": "f", "arguments": {"x": 1}},
                            }
                        ],
                    },
                ],
            },
            "messages[1].tool_calls[0].function.arguments",
        ),
        (
            {
                "model": "m",
                "messages": [
                    {
                        "role": "assistant",
                        "tool_calls": [
                            {
                                "id": "c",
                                "type": "code",
                                "function": {"name": "f", "arguments": "{}"},
                            }
                        ],
                    }
                ],
            },
            "messages[0].tool_calls[0].type",
        ),
        (
            {"model": "m", "messages": [{"role": "tool", "content": "x"}]},
            "messages[0].tool_call_id",
        ),
        ({"model": "m", "messages": [{"content": "x"}]}, "messages[0].role"),
        ({"model": "m", "messages": [USER], "seed": 2**63}, "seed"),
        ({"model": "m", "messages": [USER], "top_k": -1}, "top_k"),
        ({"model": "m", "messages": [USER], "min_p": 1.5}, "min_p"),
        ({"model": "m", "messages": [USER], "frequency_penalty": -2.5}, "frequency_penalty"),
        ({"model": "m", "messages": [USER], "logit_bias": {"not-a-token": 1}}, "logit_bias"),
        (
            {
                "model": "m",
                "messages": [USER],
                "tools": [{"type": "function", "function": {"name": "f", "parameters": []}}],
            },
            "tools[0].function.parameters",
        ),
        ({"model": "m", "messages": [USER], "tool_choice": "sometimes"}, "tool_choice"),
        (
            {
                "model": "m",
                "messages": [USER],
                "response_format": {"type": "json_schema", "json_schema": {}},
            },
            "response_format.json_schema.schema",
        ),
        (
            {"model": "m", "messages": [USER], "response_format": {"type": "yaml"}},
            "response_format.type",
        ),
        ({"model": "m", "messages": [USER], "keep_alive": -5}, "keep_alive"),
    ],
)
def test_a_malformed_chat_body_names_the_field(
    client: Any, body: dict[str, Any], param: str
) -> None:
    r = client.post("/chat", json=body)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == param, err
    assert err["type"] == "invalid_request_error" and err["code"] == "invalid_request"


def test_responses_wrong_types_are_400s(client: Any) -> None:
    for body, param in (
        ({"input": "hi", "temperature": ""}, "temperature"),
        ({"input": "hi", "max_output_tokens": "x"}, "max_output_tokens"),
        ({"input": "hi", "store": "yes"}, "store"),
        ({"temperature": 1}, "input"),
    ):
        r = client.post("/responses", json=body)
        assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text


def test_a_good_body_reaches_the_service_as_plain_data(client: Any) -> None:
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    body = {
        "model": "m",
        "messages": [
            {"role": "developer", "content": [{"type": "text", "text": "be brief"}]},
            USER,
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "c1", "content": "ok"},
        ],
        "temperature": 0,
        "seed": -1,
        "stop": "x",
        "logit_bias": {"5": -100},
        "user": "ignored",
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "r", "schema": {"type": "object"}},
        },
    }
    r = client.post("/chat", json=body)
    assert r.status_code == 201, r.text
    params = r.json()
    assert [m["role"] for m in params["messages"]] == ["developer", "user", "assistant", "tool"]
    assert params["messages"][2] == {"role": "assistant", "tool_calls": [call]}
    assert params["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "r", "schema": {"type": "object"}},
    }
    assert "user" not in params and "stream" not in params and params["temperature"] == 0


def _profile(**kw: Any) -> ModelProfile:
    return ModelProfile(id="m", source="/x.gguf", **kw)


def test_a_request_without_a_limit_gets_the_profile_default_capped_by_the_context() -> None:
    assert bounded({}, _profile())["max_tokens"] == 1024
    assert bounded({}, _profile(max_tokens=64))["max_tokens"] == 64
    assert bounded({}, _profile(context_size=256))["max_tokens"] == 256
    assert bounded({"max_tokens": 5}, _profile())["max_tokens"] == 5
    assert bounded({"max_completion_tokens": 7, "max_tokens": 5}, _profile())["max_tokens"] == 7


def test_a_limit_beyond_the_context_is_refused_with_its_field() -> None:
    with pytest.raises(InvalidRequest) as err:
        bounded({"max_completion_tokens": 3000}, _profile(context_size=2048))
    assert err.value.param == "max_completion_tokens" and "2048" in err.value.message
    with pytest.raises(InvalidRequest):
        bounded({"max_tokens": 0}, _profile())
    with pytest.raises(ValueError, match="max_tokens"):
        _profile(max_tokens=0)


def test_a_64_bit_seed_folds_into_llama_cpps_32_bits() -> None:
    assert fold_seed(7) == 7
    assert fold_seed(2**40 + 7) == 7
    assert fold_seed(-1) == 0xFFFFFFFF  # llama.cpp's LLAMA_DEFAULT_SEED: a random seed
    assert 0 <= fold_seed(-(2**63)) < 2**32


def test_a_reply_off_its_shape_is_the_daemons_error_not_a_silent_drift() -> None:
    with pytest.raises(ApplianceError, match="malformed ChatCompletion") as err:
        reply({"id": "x", "object": "chat.completion"}, ChatCompletion)
    assert err.value.status == 500
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert({"object": "nope"}, ChatCompletion)
