"""Typed bodies the Ollama-compatible routes answer with, in Ollama's shapes.

As appliance.api.replies does for the OpenAI routes: OllamaService builds plain data, a handler
turns it into one of these structs before it leaves (`reply`), so a client gets what the OpenAPI
document promises. Fields Ollama's clients read are declared; `appliance` (the daemon's own
version, beside the Ollama API version it follows) is the one addition.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec


class _Out(msgspec.Struct, kw_only=True, omit_defaults=True):
    pass


class OllamaVersion(_Out):
    version: str
    """The Ollama release whose API the routes follow."""
    appliance: str


class OllamaModelDetails(_Out):
    parent_model: str
    format: str
    family: str
    parameter_size: str
    quantization_level: str
    families: list[str] | None = None


class OllamaModel(_Out):
    name: str
    model: str
    modified_at: str
    size: int
    """Bytes of the model file (0 before it is fetched)."""
    digest: str
    """An identity of the file (id, source, size, mtime), not a hash of its bytes."""
    details: OllamaModelDetails


class OllamaModelList(_Out):
    models: list[OllamaModel]


class OllamaRunningModel(_Out):
    name: str
    model: str
    size: int
    """Bytes the loaded model holds (measured)."""
    size_vram: int
    digest: str
    details: OllamaModelDetails
    expires_at: str
    """When it unloads if no request comes; far in the future for a pinned model."""
    context_length: int


class OllamaRunningList(_Out):
    models: list[OllamaRunningModel]


class OllamaShow(_Out):
    modelfile: str
    parameters: str
    template: str
    details: OllamaModelDetails
    model_info: dict[str, Any]
    capabilities: list[str]
    modified_at: str


class OllamaCalledFunction(_Out):
    name: str
    arguments: dict[str, Any]


class OllamaCall(_Out):
    function: OllamaCalledFunction


class OllamaReplyMessage(_Out):
    role: Literal["assistant"]
    content: str
    tool_calls: list[OllamaCall] | None = None


class _Ending(_Out):
    model: str
    created_at: str
    done: bool
    done_reason: str | None = None
    """stop, length or cancelled; load or unload for a call with nothing to say."""
    total_duration: int | None = None
    """Nanoseconds, as every duration here."""
    load_duration: int | None = None
    prompt_eval_count: int | None = None
    prompt_eval_duration: int | None = None
    eval_count: int | None = None
    eval_duration: int | None = None


class OllamaChatReply(_Ending, kw_only=True):
    message: OllamaReplyMessage


class OllamaGenerateReply(_Ending, kw_only=True):
    response: str


class OllamaEmbedReply(_Out):
    model: str
    embeddings: list[list[float]]
    """Unit-length vectors, one per input."""
    total_duration: int
    load_duration: int
    prompt_eval_count: int


class OllamaEmbeddingsReply(_Out):
    embedding: list[float]
