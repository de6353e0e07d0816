"""Typed bodies the OpenAI-compatible routes answer with, in OpenAI's shapes.

Chat completions, completions and embeddings are built as structs by ChatService (their shapes
live in appliance.openai.shapes and are re-exported here). The other services build their
answers as plain data; a handler turns it into one of these structs (`reply`) before it leaves,
so what a client gets is exactly what the OpenAPI document at `/openapi.json` promises, and a
drift between the two is caught in the daemon (and by the schemathesis test) instead of in a
client's parser. Extra fields the appliance adds to OpenAI's shapes (`timings`, a model's `kind`
and `state`) are declared here too.
"""

from __future__ import annotations

from typing import Any, Literal, TypeVar

import msgspec

from appliance.errors import ApplianceError
from appliance.openai.shapes import (
    AssistantReply,
    ChatChoice,
    ChatCompletion,
    Completion,
    CompletionChoice,
    Embedding,
    EmbeddingList,
    EmbeddingUsage,
    PromptTokensDetails,
    Usage,
)

__all__ = [
    "AssistantReply",
    "ChatChoice",
    "ChatCompletion",
    "Completion",
    "CompletionChoice",
    "Embedding",
    "EmbeddingList",
    "EmbeddingUsage",
    "ErrorBody",
    "ModelList",
    "PromptTokensDetails",
    "ResponseObject",
    "Usage",
    "reply",
]

T = TypeVar("T")


class _Out(msgspec.Struct, kw_only=True):
    pass


def reply(data: Any, shape: type[T]) -> T:
    """`data` (what a service built) as the struct `shape`; a mismatch is the daemon's bug."""
    try:
        return msgspec.convert(data, shape)
    except msgspec.ValidationError as exc:
        raise ApplianceError(
            f"the daemon built a malformed {shape.__name__} ({exc}); this is a bug, "
            "please report it with the daemon log"
        ) from exc


# --- models ----------------------------------------------------------------------------------


class ModelObject(_Out):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str
    kind: str
    """`chat` or `embedding`."""
    state: str
    """The model's lifecycle state: unloaded, loading, ready, busy, unloading or failed."""


class ModelList(_Out):
    object: Literal["list"]
    data: list[ModelObject]


# --- responses -------------------------------------------------------------------------------


class OutputText(_Out):
    type: Literal["output_text"]
    text: str
    annotations: list[Any]
    logprobs: list[Any]


class OutputMessage(_Out, tag="message", tag_field="type"):
    id: str
    role: Literal["assistant"]
    status: str
    content: list[OutputText]


class FunctionCallItem(_Out, tag="function_call", tag_field="type"):
    id: str
    call_id: str
    name: str
    arguments: str
    status: str


OutputItem = OutputMessage | FunctionCallItem


class InputTokensDetails(_Out):
    cached_tokens: int
    cache_write_tokens: int


class OutputTokensDetails(_Out):
    reasoning_tokens: int


class ResponseUsage(_Out):
    input_tokens: int
    output_tokens: int
    total_tokens: int
    input_tokens_details: InputTokensDetails
    output_tokens_details: OutputTokensDetails


class ResponseObject(_Out):
    id: str
    object: Literal["response"]
    created_at: float
    completed_at: float | None
    status: str
    """completed, incomplete (max_output_tokens reached) or in_progress (while streaming)."""
    incomplete_details: dict[str, Any] | None
    error: dict[str, Any] | None
    model: str
    output: list[OutputItem]
    instructions: str | None
    previous_response_id: str | None
    parallel_tool_calls: bool
    tool_choice: str | dict[str, Any]
    tools: list[dict[str, Any]]
    temperature: float | None
    top_p: float | None
    max_output_tokens: int | None
    metadata: dict[str, Any]
    store: bool
    text: dict[str, Any]
    truncation: str
    usage: ResponseUsage
    timings: dict[str, Any]


# --- errors ----------------------------------------------------------------------------------


class ErrorDetail(_Out):
    message: str
    """What went wrong and what to do next."""
    type: str
    param: str | None
    """The request field the error is about (`messages[1].tool_calls[0].function`), if any."""
    code: str | None


class ErrorBody(_Out):
    """OpenAI's error body: every error response of the API has this shape."""

    error: ErrorDetail
