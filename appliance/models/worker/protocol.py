"""Messages between the daemon and a model worker process.

Frames are msgpack-encoded tagged structs preceded by a 4-byte big-endian length, written on the
worker's stdin (commands) and a private copy of its stdout (events). The worker points its own
fd 1 at stderr so nothing llama.cpp prints can corrupt the stream. Neither side writes or reads
a frame over `MAX_FRAME`: the writer refuses it (`encode`, so the request fails with a message),
the reader refuses a header that announces one (`frame_size`) instead of buffering it.
"""

from __future__ import annotations

import struct
from typing import Any

import msgspec

from appliance.errors import PayloadTooLarge

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
    chat_template: str | None = None


class Generate(msgspec.Struct, tag="generate", kw_only=True):
    """One chat or completion request. `params` holds the OpenAI request fields."""

    id: int
    op: str  # "chat" | "completion"
    params: dict[str, Any]
    slot_key: str | None = None
    window: int = 0
    """Deltas the worker may send before it needs a Credit (0: no flow control)."""
    park_evicted_to: str | None = None
    """A directory. Before a slot bound to another key is given to `slot_key`, that key's KV
    state is saved there as `<key>.kv`; the result lists it under "parked"."""
    restore_from: str | None = None
    """A parked state of `slot_key` (kvfile format), loaded when the slot was not already bound
    to the key and the file's tokens share most of their prefix with the prompt; the result
    says what happened under "restore"."""
    restore_prefix_hash: str | None = None
    """The token prefix hash indexed for `restore_from`; a file that hashes differently is not used."""
    grammar: str | None = None
    """GBNF the reply must follow (tools, response_format), built and proven by the daemon
    (appliance.models.grammars); the worker never builds a grammar from a client's schema."""


class Embed(msgspec.Struct, tag="embed", kw_only=True):
    id: int
    inputs: list[str]


class Tokenize(msgspec.Struct, tag="tokenize", kw_only=True):
    id: int
    text: str


class SaveSlot(msgspec.Struct, tag="save_slot", kw_only=True):
    """Write the KV state of the slot bound to `slot_key` to `path`."""

    id: int
    slot_key: str
    path: str


class RestoreSlot(msgspec.Struct, tag="restore_slot", kw_only=True):
    """Load KV state from `path` into a slot bound to `slot_key`."""

    id: int
    slot_key: str
    path: str


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


class Delta(msgspec.Struct, tag="delta", kw_only=True):
    id: int
    text: str


class Done(msgspec.Struct, tag="done", kw_only=True):
    """The end of a request; `result` is op-specific (text, tool_calls, usage, timings...)."""

    id: int
    result: dict[str, Any]


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
