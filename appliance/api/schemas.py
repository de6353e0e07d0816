"""Typed request bodies of the OpenAI-compatible routes.

Fields are validated by type here; meaning (which model, which tools) is checked by the services.
Unknown fields are accepted and ignored, as OpenAI clients send fields that a local server may not
use (user, metadata, ...).
"""

from __future__ import annotations

from typing import Any

import msgspec


class _Body(msgspec.Struct, kw_only=True, omit_defaults=True):
    def to_params(self) -> dict[str, Any]:
        return {k: v for k, v in msgspec.structs.asdict(self).items() if v is not None}


class Sampling(_Body, kw_only=True):
    model: str
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    repeat_penalty: float | None = None
    seed: int | None = None
    stop: str | list[str] | None = None
    logit_bias: dict[str, float] | None = None
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    n: int | None = None
    keep_alive: float | None = None


class ChatCompletionRequest(Sampling, kw_only=True):
    messages: list[dict[str, Any]]
    max_completion_tokens: int | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    response_format: dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None


class CompletionRequest(Sampling, kw_only=True):
    prompt: str | list[str]


class EmbeddingRequest(_Body, kw_only=True):
    model: str
    input: str | list[str]
    encoding_format: str | None = None
    dimensions: int | None = None
    keep_alive: float | None = None


class AddModelRequest(_Body, kw_only=True):
    path: str
    id: str | None = None
    kind: str = "chat"
    replace: bool = False


class KeepAlive(_Body, kw_only=True):
    keep_alive: float | None = None
