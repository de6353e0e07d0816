"""Typed bodies of the OpenAI-compatible routes: requests, checked at the edge, and the replies.

A body is decoded into these structs before a handler runs, so a wrong type, a value out of
OpenAI's documented range (appliance.sampling) or a malformed message, tool call or tool is a
400 whose `param` names the field (`messages[1].tool_calls[0].function`), before a lease is taken
or a model loaded. Meaning that needs the catalog (which model, how much context) is checked by
the services. Unknown fields are accepted and ignored, as OpenAI clients send fields that a local
server may not use (user, metadata, ...). The same structs are the request schemas of the
OpenAPI document.

What is not checked here: the contents of JSON schemas (`tools[].function.parameters`,
`response_format.json_schema.schema`), which become grammars and are checked where they do.

The replies of chat completions, completions and embeddings, and the chunks of their streams,
are structs too (the end of this module): ChatService builds them, the routes send them as they
are, and they are the response schemas of the OpenAPI document. Extra fields the appliance adds
to OpenAI's shapes (`timings`) are declared with them.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

from appliance.sampling import (
    Bias,
    KeepAlive,
    MaxTokens,
    MinP,
    Penalty,
    RepeatPenalty,
    Seed,
    StopList,
    Temperature,
    TokenId,
    TopK,
    TopP,
)


class _Body(msgspec.Struct, kw_only=True, omit_defaults=True):
    def to_params(self) -> dict[str, Any]:
        """The request as plain data (unset fields left out), what the services take."""
        out: dict[str, Any] = msgspec.to_builtins(self)
        return out


# --- messages --------------------------------------------------------------------------------


class TextPart(_Body, kw_only=True):
    """A part of a message's content; only text parts are supported."""

    type: Literal["text", "input_text", "output_text"]
    text: str


Content = str | list[TextPart]


class FunctionCall(_Body, kw_only=True):
    name: str
    arguments: str
    """The arguments as a JSON text, as the model produced them."""


class ToolCall(_Body, kw_only=True):
    id: str
    type: Literal["function"]
    function: FunctionCall


class SystemMessage(_Body, tag="system", tag_field="role", kw_only=True):
    content: Content
    name: str | None = None


class DeveloperMessage(SystemMessage, tag="developer", tag_field="role", kw_only=True):
    pass


class UserMessage(_Body, tag="user", tag_field="role", kw_only=True):
    content: Content
    name: str | None = None


class AssistantMessage(_Body, tag="assistant", tag_field="role", kw_only=True):
    content: Content | None = None
    tool_calls: list[ToolCall] | None = None
    name: str | None = None


class ToolMessage(_Body, tag="tool", tag_field="role", kw_only=True):
    content: Content
    tool_call_id: str
    """The id of the assistant's tool call this message answers."""


class FunctionMessage(_Body, tag="function", tag_field="role", kw_only=True):
    """The deprecated function-calling result message."""

    content: Content | None
    name: str


ChatMessage = (
    SystemMessage
    | DeveloperMessage
    | UserMessage
    | AssistantMessage
    | ToolMessage
    | FunctionMessage
)


# --- tools and formats -----------------------------------------------------------------------


class FunctionDefinition(_Body, kw_only=True):
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None
    """A JSON schema of an object: the arguments the model must produce."""
    strict: bool | None = None


class ChatTool(_Body, kw_only=True):
    type: Literal["function"]
    function: FunctionDefinition


class NamedFunction(_Body, kw_only=True):
    name: str


class ToolChoiceFunction(_Body, kw_only=True):
    type: Literal["function"]
    function: NamedFunction


ToolChoice = Literal["none", "auto", "required"] | ToolChoiceFunction


class JsonSchemaFormat(_Body, kw_only=True):
    name: str | None = None
    description: str | None = None
    schema_: dict[str, Any] = msgspec.field(name="schema")
    strict: bool | None = None


class TextFormat(_Body, tag="text", tag_field="type", kw_only=True):
    pass


class JsonObjectFormat(_Body, tag="json_object", tag_field="type", kw_only=True):
    pass


class JsonSchemaResponseFormat(_Body, tag="json_schema", tag_field="type", kw_only=True):
    json_schema: JsonSchemaFormat


ResponseFormat = TextFormat | JsonObjectFormat | JsonSchemaResponseFormat


class StreamOptions(_Body, kw_only=True):
    include_usage: bool | None = None


# --- requests --------------------------------------------------------------------------------


class Sampling(_Body, kw_only=True):
    model: str
    max_tokens: MaxTokens | None = None
    temperature: Temperature | None = None
    top_p: TopP | None = None
    top_k: TopK | None = None
    min_p: MinP | None = None
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None
    repeat_penalty: RepeatPenalty | None = None
    seed: Seed | None = None
    stop: str | StopList | None = None
    logit_bias: dict[TokenId, Bias] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: Literal[1] | None = None
    """Choices per request: only 1 is supported."""
    keep_alive: KeepAlive | None = None


class ChatCompletionRequest(Sampling, kw_only=True):
    messages: list[ChatMessage]
    logprobs: bool | None = None
    top_logprobs: Annotated[int, msgspec.Meta(ge=0, le=20)] | None = None
    """Alternatives per token with logprobs (OpenAI's range: 0 to 20)."""
    max_completion_tokens: MaxTokens | None = None
    tools: list[ChatTool] | None = None
    tool_choice: ToolChoice | None = None
    response_format: ResponseFormat | None = None
    parallel_tool_calls: bool | None = None


class CompletionRequest(Sampling, kw_only=True):
    prompt: str | list[str]
    logprobs: Annotated[int, msgspec.Meta(ge=0, le=5)] | None = None
    """Log probabilities of each token with this many alternatives (OpenAI's range: 0 to 5)."""


class EmbeddingRequest(_Body, kw_only=True):
    model: str
    input: str | list[str]
    encoding_format: Literal["float", "base64"] | None = None
    dimensions: MaxTokens | None = None
    keep_alive: KeepAlive | None = None


class ResponsesRequest(_Body, kw_only=True):
    """`POST /v1/responses`. Input items and tools are checked by the service, which knows the
    item kinds it supports and says which it does not."""

    model: str | None = None
    """Required unless previous_response_id gives it."""
    input: str | list[dict[str, Any]]
    instructions: str | None = None
    previous_response_id: str | None = None
    store: bool | None = None
    stream: bool = False
    temperature: Temperature | None = None
    top_p: TopP | None = None
    max_output_tokens: MaxTokens | None = None
    seed: Seed | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    metadata: dict[str, str] | None = None
    text: dict[str, Any] | None = None
    """`{"format": {...}}`: plain text, json_object or a json_schema; checked by the service."""


# --- replies ---------------------------------------------------------------------------------


class _Reply(msgspec.Struct, kw_only=True):
    """A reply: every field is sent, None as null."""


class PromptTokensDetails(_Reply, kw_only=True):
    cached_tokens: int


class Usage(_Reply, kw_only=True):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails | None = None


class StreamUsage(Usage, kw_only=True, omit_defaults=True):
    """The usage of a stream's last chunk (`stream_options.include_usage`): the details only
    when some prompt tokens were cached."""


class AssistantReply(_Reply, kw_only=True):
    role: Literal["assistant"]
    content: str | None
    tool_calls: list[ToolCall] | None = None


class TopLogprob(_Reply, kw_only=True):
    token: str
    logprob: float
    bytes: list[int]


class ChatTokenLogprob(_Reply, kw_only=True):
    token: str
    logprob: float
    bytes: list[int]
    top_logprobs: list[TopLogprob]


class ChatLogprobs(_Reply, kw_only=True):
    content: list[ChatTokenLogprob]
    refusal: None = None


class CompletionLogprobs(_Reply, kw_only=True):
    """The legacy completions shape: parallel lists, one entry per token."""

    tokens: list[str]
    token_logprobs: list[float]
    top_logprobs: list[dict[str, float]] | None
    text_offset: list[int]


class ChatChoice(_Reply, kw_only=True):
    index: int
    message: AssistantReply
    finish_reason: str
    """stop, length, tool_calls, or cancelled."""
    logprobs: ChatLogprobs | None = None


class ChatCompletion(_Reply, kw_only=True):
    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage
    timings: dict[str, Any]
    """Where the time went: queue_ms, load_ms, prefill_ms, decode_ms, ... (appliance extension)."""


class CompletionChoice(_Reply, kw_only=True):
    index: int
    text: str
    finish_reason: str
    logprobs: CompletionLogprobs | None = None


class Completion(_Reply, kw_only=True):
    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage
    timings: dict[str, Any]


class IndexedToolCall(_Reply, kw_only=True):
    """A tool call in a chunk's delta: OpenAI numbers them."""

    index: int
    id: str
    type: Literal["function"]
    function: FunctionCall


class ChatDelta(_Reply, kw_only=True, omit_defaults=True):
    """What a chunk adds to the message; unset fields are left out."""

    role: Literal["assistant"] | None = None
    content: str | None = None
    tool_calls: list[IndexedToolCall] | None = None


class ChatChunkChoice(_Reply, kw_only=True):
    index: int
    delta: ChatDelta
    finish_reason: str | None
    """Set on the last chunk of the choice."""
    logprobs: ChatLogprobs | None = None


class ChatCompletionChunk(_Reply, kw_only=True, omit_defaults=True):
    """One `data:` event of a streamed chat completion."""

    id: str
    object: Literal["chat.completion.chunk"]
    created: int
    model: str
    choices: list[ChatChunkChoice]
    timings: dict[str, Any] | None = None
    """On the chunk that ends the choice (appliance extension)."""
    usage: StreamUsage | None = None
    """On a last chunk of its own, with no choices, when asked for."""


class CompletionChunkChoice(_Reply, kw_only=True):
    index: int
    text: str
    finish_reason: str | None
    logprobs: CompletionLogprobs | None = None


class CompletionChunk(_Reply, kw_only=True, omit_defaults=True):
    """One `data:` event of a streamed completion."""

    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    choices: list[CompletionChunkChoice]
    usage: StreamUsage | None = None


class Embedding(_Reply, kw_only=True):
    object: Literal["embedding"]
    index: int
    embedding: list[float] | str
    """Floats, or with encoding_format "base64" their little-endian float32 bytes in base64."""


class EmbeddingUsage(_Reply, kw_only=True):
    prompt_tokens: int
    total_tokens: int


class EmbeddingList(_Reply, kw_only=True):
    object: Literal["list"]
    data: list[Embedding]
    model: str
    usage: EmbeddingUsage
