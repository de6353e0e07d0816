"""Messages between the daemon and a model worker process.

Every command, its parameters and every result are typed structs: the daemon reads a result's
attributes, never a dict's keys, and what the worker may be sent (`GenerateParams`) is exactly
what it reads of an OpenAI request. `Done.result` is one tagged struct per operation.

Frames are msgpack-encoded tagged structs preceded by a 4-byte big-endian length, written on the
worker's stdin (commands) and a private copy of its stdout (events). The worker points its own
fd 1 at stderr so nothing llama.cpp prints can corrupt the stream. Neither side writes or reads
a frame over `MAX_FRAME`: the writer refuses it (`encode`, so the request fails with a message),
the reader refuses a header that announces one (`frame_size`) instead of buffering it.
"""

from __future__ import annotations

import struct
from typing import Any, Literal, TypeVar

import msgspec

from appliance.errors import InvalidRequest, PayloadTooLarge

HEADER = struct.Struct(">I")
MAX_FRAME = 256 * 1024 * 1024
"""The largest frame body either side writes or reads (bytes)."""


# --- daemon -> worker ----------------------------------------------------------------------


class Load(msgspec.Struct, tag="load", kw_only=True):
    model_path: str
    kind: str = "chat"
    n_ctx: int = 2048
    n_gpu_layers: int = -1
    n_threads: int = 0
    n_batch: int = 512
    parallel: int = 1
    """Sequences of the one context: requests decoded together, each `n_ctx` tokens long."""
    kv_unified: bool = True
    """One KV buffer for every sequence (cells of a shared prefix are shared, not copied) instead
    of a stream per sequence."""
    flash_attn: bool = False
    """Flash attention (see ModelProfile.flash_attention)."""
    kv_ram_budget: int = 0
    """Bytes of parked sessions' KV state kept in this worker's memory before they go to disk."""
    chat_template: str | None = None


class GenerateParams(msgspec.Struct, kw_only=True, omit_defaults=True):
    """The fields of an OpenAI chat or completion request that a worker reads.

    Built from a request the daemon has already checked (appliance.openai.shapes) by
    `from_request`, so a field the worker does not use never crosses the pipe."""

    messages: list[dict[str, Any]] | None = None
    """Chat: the OpenAI messages, rendered with the model's chat template."""
    prompt: str | None = None
    """Completion: the prompt text."""
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    max_tokens: int | None = None
    """The reply limit; the worker cuts it to what the context has left after the prompt."""
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    repeat_penalty: float | None = None
    seed: int | None = None
    stop: list[str] | None = None
    logit_bias: dict[str, float] | None = None
    """OpenAI's form: token ids as decimal strings; checked against the vocabulary by the worker."""
    logprobs: int | None = None
    """Report each generated token's log probability with this many most likely alternatives
    (0: the token's own only); None: no log probabilities."""

    @classmethod
    def from_request(cls, params: dict[str, Any]) -> GenerateParams:
        """The worker's fields of an OpenAI request (other fields are left out).

        `max_completion_tokens` wins over `max_tokens`; a stop string becomes a list of one and a
        completion prompt given as a list of one string becomes that string. InvalidRequest when
        a field has a type the worker cannot use."""
        fields = {k: v for k, v in params.items() if k in cls.__struct_fields__}
        limit = params.get("max_completion_tokens")
        if limit is not None:
            fields["max_tokens"] = limit
        if isinstance(fields.get("stop"), str):
            fields["stop"] = [fields["stop"]]
        # chat: logprobs is a flag and top_logprobs the alternatives; completions: a number
        lp = params.get("logprobs")
        if lp is True:
            fields["logprobs"] = params.get("top_logprobs") or 0
        elif lp is None or lp is False:
            fields.pop("logprobs", None)
        prompt = fields.get("prompt")
        if isinstance(prompt, list):
            if len(prompt) != 1 or not isinstance(prompt[0], str):
                raise InvalidRequest(
                    "prompt must be a string (or a list of one string)", param="prompt"
                )
            fields["prompt"] = prompt[0]
        try:
            return msgspec.convert(fields, cls, strict=False)
        except msgspec.ValidationError as exc:
            raise InvalidRequest(f"a generation parameter is malformed: {exc}") from None


class Generate(msgspec.Struct, tag="generate", kw_only=True):
    """One chat or completion request; answered with Delta* then a Done carrying a GenerateResult."""

    id: int
    op: str  # "chat" | "completion"
    params: GenerateParams
    slot_key: str | None = None
    window: int = 0
    """Deltas the worker may send before it needs a Credit (0: no flow control)."""
    park_evicted_to: str | None = None
    """A directory. Before a slot bound to another key is given to `slot_key`, that key's KV
    state is saved there as `<key>.kv`; the result lists it in `parked`."""
    restore_from: str | None = None
    """A parked state of `slot_key` (kvfile format), loaded when the slot was not already bound
    to the key and the file's tokens share most of their prefix with the prompt; the result
    says what happened in `restore`."""
    restore_prefix_hash: str | None = None
    """The token prefix hash indexed for `restore_from`; a file that hashes differently is not used."""
    grammar: str | None = None
    """GBNF the reply must follow (tools, response_format), built and proven by the daemon
    (appliance.models.grammars); the worker never builds a grammar from a client's schema."""


class Embed(msgspec.Struct, tag="embed", kw_only=True):
    """Answered with a Done carrying an EmbedResult."""

    id: int
    inputs: list[str]


class Tokenize(msgspec.Struct, tag="tokenize", kw_only=True):
    """Answered with a Done carrying a TokenizeResult."""

    id: int
    text: str


class SaveSlot(msgspec.Struct, tag="save_slot", kw_only=True):
    """Write the KV state of the slot bound to `slot_key` to `path` (answered with a SaveResult)."""

    id: int
    slot_key: str
    path: str


class RestoreSlot(msgspec.Struct, tag="restore_slot", kw_only=True):
    """Load KV state from `path` into a slot bound to `slot_key` (answered with a RestoreReport)."""

    id: int
    slot_key: str
    path: str


class Stats(msgspec.Struct, tag="stats", kw_only=True):
    """What the engine's sequences hold and its counters (answered with a StatsResult)."""

    id: int


class Cancel(msgspec.Struct, tag="cancel", kw_only=True):
    id: int


class Credit(msgspec.Struct, tag="credit", kw_only=True):
    """Flow control: the worker may send deltas of request `id` up to number `upto` (counted from
    1). A client that stops reading so stops the generation, instead of piling text up in memory."""

    id: int
    upto: int


class Shutdown(msgspec.Struct, tag="shutdown"):
    pass


class Prewarm(msgspec.Struct, tag="prewarm", kw_only=True):
    """A spare worker's warm-up: open `model_path` vocabulary-only, so the one-time costs of the
    first model load in a process (backend set-up, file mapping) are paid before a request waits."""

    model_path: str


class Unload(msgspec.Struct, tag="unload"):
    """Drop the loaded model and become a spare again (answered with Unloaded). Sent only to an
    idle worker; the scheduler recycles it for the next load instead of starting a process."""


class Ping(msgspec.Struct, tag="ping"):
    """Are you there? Answered with a Pong by the worker's reader thread at once, whatever its
    requests are doing, so a worker that stays silent is stopped or hung, not busy."""


Command = (
    Load
    | Generate
    | Embed
    | Tokenize
    | SaveSlot
    | RestoreSlot
    | Stats
    | Cancel
    | Credit
    | Shutdown
    | Prewarm
    | Ping
    | Unload
)


# --- worker -> daemon ----------------------------------------------------------------------


class Hello(msgspec.Struct, tag="hello", kw_only=True):
    pid: int
    llama_cpp_version: str
    gpu_offload: bool
    import_ms: float


class Loaded(msgspec.Struct, tag="loaded", kw_only=True):
    load_ms: float
    memory_bytes: int
    n_ctx: int
    n_ctx_train: int
    metadata: dict[str, str]


class TopLogprob(msgspec.Struct, kw_only=True, array_like=True):
    token: str
    logprob: float
    bytes: list[int]


class TokenLogprob(msgspec.Struct, kw_only=True, array_like=True):
    """One generated token's log probability (of the model's distribution, before sampling's
    adjustments) and its most likely alternatives."""

    token: str
    logprob: float
    bytes: list[int]
    top: list[TopLogprob] = msgspec.field(default_factory=list)


class Delta(msgspec.Struct, tag="delta", kw_only=True):
    id: int
    text: str
    logprobs: list[TokenLogprob] | None = None
    """When asked for: the tokens whose text this delta completes."""


class Usage(msgspec.Struct, kw_only=True):
    """Tokens of one generation."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    cached_tokens: int = 0
    """Prompt tokens not evaluated again: the sequence held them, or copied them."""
    shared_tokens: int = 0
    """Of cached_tokens, those copied from another sequence (a shared system prompt)."""


class Timings(msgspec.Struct, kw_only=True):
    """Where a generation's time went inside the worker (milliseconds)."""

    prefill_ms: float = 0.0
    decode_ms: float = 0.0
    total_ms: float = 0.0
    slot: int = 0
    """The slot (sequence) that ran it."""


class FunctionCall(msgspec.Struct, kw_only=True):
    name: str
    arguments: str
    """The arguments as a JSON text."""


class ToolCall(msgspec.Struct, kw_only=True):
    """A tool call the model made, in OpenAI's shape."""

    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class SavedState(msgspec.Struct, kw_only=True):
    """What saving a slot's KV state wrote (kvfile format)."""

    bytes: int
    n_tokens: int
    prefix_hash: str
    """The hash of the saved tokens (kvfile.token_prefix_hash), what the daemon indexes."""


class ParkReport(msgspec.Struct, kw_only=True):
    """A session's state a request displaced from its slot: saved to `path`, or `error`."""

    slot_key: str
    tier: Literal["disk", "ram"] = "disk"
    """ram: kept in the worker's RAM tier (`path` is None); disk: written to `path`."""
    path: str | None = None
    state: SavedState | None = None
    error: str | None = None


class RestoreReport(msgspec.Struct, tag="restored", kw_only=True):
    """What became of a parked state a request brought (or of a RestoreSlot)."""

    restored: bool
    tier: Literal["disk", "ram"] | None = None
    """Where the state came from (None: nothing was tried)."""
    n_tokens: int = 0
    shared_tokens: int = 0
    """Tokens the file shares with the prompt."""
    bytes: int = 0
    ms: float = 0.0
    error: str | None = None
    """The file could not be used (damaged, rejected): the daemon drops it from the index."""
    reason: str | None = None
    """Why an intact file was not used (another prefix): it stays indexed."""


class GenerateResult(msgspec.Struct, tag="generated", kw_only=True):
    text: str
    """Everything the model produced (with tools: the raw constrained reply)."""
    finish_reason: str
    """stop, length, tool_calls or cancelled."""
    usage: Usage
    timings: Timings
    content: str | None = None
    """Set when the reply was parsed whole (the request offered tools): its text part, None when
    it is a tool call. No deltas were sent for such a reply."""
    tool_calls: list[ToolCall] = msgspec.field(default_factory=list)
    parked: list[ParkReport] = msgspec.field(default_factory=list)
    """Sessions' states this request displaced from its slot (see Generate.park_evicted_to)."""
    restore: RestoreReport | None = None
    """What became of Generate.restore_from (None: it was not tried)."""
    logprobs: list[TokenLogprob] | None = None
    """Every generated token's log probability, when the request asked for them."""

    @property
    def answer(self) -> str:
        """The reply's text as a client sees it: the parsed text part when the request offered
        tools, else the whole text. The one place that rule lives. (A reply with tool_calls has
        no text part: readers check tool_calls first.)"""
        return self.content if self.content is not None else self.text

    @property
    def unstreamed(self) -> str:
        """Text no Delta carried: a tool-enabled reply's text part (parsed whole, at the end)."""
        return "" if self.tool_calls else (self.content or "")


class EmbedResult(msgspec.Struct, tag="embedded", kw_only=True):
    embeddings: list[list[float]]
    """One vector per input (empty when `per_token`)."""
    prompt_tokens: int
    per_token: bool = False
    """The model gives one vector per token, not per input (its GGUF sets no pooling)."""


class TokenizeResult(msgspec.Struct, tag="tokenized", kw_only=True):
    tokens: list[int]
    """With the BOS the worker adds."""


class SaveResult(msgspec.Struct, tag="saved", kw_only=True):
    state: SavedState | None = None
    """None: the slot held nothing of the key (never bound, empty, or given away meanwhile)."""


class SeqInfo(msgspec.Struct, kw_only=True):
    id: int
    n_tokens: int
    """Tokens the engine knows the sequence holds."""
    cells: int
    """Positions llama.cpp's memory holds for it (0: its cells are free)."""
    key: str | None
    busy: bool


class StatsResult(msgspec.Struct, tag="stats", kw_only=True):
    sequences: list[SeqInfo]
    steps: int
    """Decodes run (each one batch of every active sequence)."""
    decoded_tokens: int
    decode_ms: float
    """Time inside llama_decode."""
    busy_ms: float
    """Time the engine thread worked (decoding included): the difference is its own overhead."""
    prompt_evaluated: int
    """Prompt tokens evaluated."""
    prompt_reused: int
    """Prompt tokens a sequence held already or copied (not evaluated)."""
    prompt_shared: int
    """Of those, tokens copied from another sequence."""
    ram_entries: int
    ram_bytes: int
    ram_hits: int
    ram_spilled: int


Result = GenerateResult | EmbedResult | TokenizeResult | SaveResult | RestoreReport | StatsResult
R = TypeVar(
    "R", GenerateResult, EmbedResult, TokenizeResult, SaveResult, RestoreReport, StatsResult
)


class Done(msgspec.Struct, tag="done", kw_only=True):
    """The end of a request, with the result of its operation."""

    id: int
    result: Result


class Failed(msgspec.Struct, tag="failed", kw_only=True):
    """A request (id) or the load (id 0) failed inside the worker."""

    id: int
    message: str
    kind: str = "error"  # "error" | "invalid_request" | "context_overflow"


class Unloaded(msgspec.Struct, tag="unloaded", kw_only=True):
    """The model is gone from the worker; `rss_bytes` is what the process still holds."""

    rss_bytes: int


class Pong(msgspec.Struct, tag="pong"):
    pass


Event = Hello | Loaded | Delta | Done | Failed | Pong | Unloaded

_encoder = msgspec.msgpack.Encoder()
_command_decoder = msgspec.msgpack.Decoder(Command)
_event_decoder = msgspec.msgpack.Decoder(Event)


def encode(msg: Command | Event) -> bytes:
    """The frame of `msg`; PayloadTooLarge when its body is over MAX_FRAME."""
    body = _encoder.encode(msg)
    if len(body) > MAX_FRAME:
        raise PayloadTooLarge(
            f"a {type(msg).__name__.lower()} message of {len(body) / 2**20:.0f} MiB is over the "
            f"{MAX_FRAME // 2**20} MiB limit of one worker frame. Send less in one request."
        )
    return HEADER.pack(len(body)) + body


def frame_size(header: bytes) -> int:
    """The body size a frame header announces; PayloadTooLarge when it is over MAX_FRAME (the
    peer is broken: the stream cannot be trusted past it)."""
    (size,) = HEADER.unpack(header)
    if size > MAX_FRAME:
        raise PayloadTooLarge(
            f"a worker frame announces {size} bytes, over MAX_FRAME ({MAX_FRAME})"
        )
    return int(size)


def decode_command(body: bytes) -> Command:
    return _command_decoder.decode(body)


def decode_event(body: bytes) -> Event:
    return _event_decoder.decode(body)
