"""What a GGUF file says about the memory it will need, read without loading it.

The estimate is the weights (the tensor data in the file) plus the KV cache for the configured
context (f16 keys and values for every layer, per parallel sequence), plus one compute-buffer
allowance: a worker holds the weights once and one context for all its sequences.
The scheduler uses it to decide what to evict before a load, then replaces it with what the worker
really used.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from appliance.errors import ModelUnavailable


@dataclass(frozen=True)
class GgufInfo:
    architecture: str
    file_bytes: int
    n_layer: int
    n_embd: int
    n_head: int
    n_head_kv: int
    head_dim_k: int
    head_dim_v: int
    context_length: int

    def kv_bytes(self, n_ctx: int) -> int:
        """f16 K and V for every layer over n_ctx tokens."""
        per_token = self.n_layer * self.n_head_kv * (self.head_dim_k + self.head_dim_v) * 2
        return per_token * n_ctx

    def estimate_bytes(self, n_ctx: int, parallel: int = 1, *, gpu: bool = False) -> int:
        """Weights once, the KV cache of every sequence, and one context's compute buffers: the
        worker holds one context for all its sequences (`gpu` no longer changes the sum)."""
        compute = 32 * 2**20 + n_ctx * self.n_embd * 4 * 4
        return self.file_bytes + parallel * self.kv_bytes(n_ctx) + compute


def _field(meta: dict[str, Any], key: str, default: int | str | None = None) -> Any:
    value = meta.get(key)
    return default if value is None else value


@functools.lru_cache(maxsize=128)
def _read(path: str, mtime_ns: int, size: int) -> GgufInfo:
    # the header alone (read_gguf_metadata): GGUFReader would parse every tensor, seconds on the
    # first request of a model that was just pulled
    meta = read_gguf_metadata(Path(path))
    arch = str(_field(meta, "general.architecture", "llama"))
    n_embd = int(_field(meta, f"{arch}.embedding_length", 0) or 0)
    n_head = int(_field(meta, f"{arch}.attention.head_count", 1) or 1)
    n_head_kv = int(_field(meta, f"{arch}.attention.head_count_kv", n_head) or n_head)
    head_dim = n_embd // n_head if n_head else 0
    return GgufInfo(
        architecture=arch,
        file_bytes=size,
        n_layer=int(_field(meta, f"{arch}.block_count", 0) or 0),
        n_embd=n_embd,
        n_head=n_head,
        n_head_kv=n_head_kv,
        head_dim_k=int(_field(meta, f"{arch}.attention.key_length", head_dim) or head_dim),
        head_dim_v=int(_field(meta, f"{arch}.attention.value_length", head_dim) or head_dim),
        context_length=int(_field(meta, f"{arch}.context_length", 0) or 0),
    )


def read_gguf_info(path: Path) -> GgufInfo:
    st = os.stat(path)
    return _read(str(path), st.st_mtime_ns, st.st_size)


MAX_PROFILE_CONTEXT = 8192
"""The context_size of a profile written from a GGUF (a pull, an import) is the GGUF's trained
context capped here: KV memory grows with it, and a 128k context would make a small model need
gigabytes. Raise it in the profile."""

EMBEDDING_ARCHITECTURES = frozenset(
    {"bert", "nomic-bert", "nomic-bert-moe", "jina-bert-v2", "jina-bert-v3", "t5encoder"}
)
"""Architectures llama.cpp runs as encoders only: their GGUFs are embedding models."""

_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q"}
_SCALARS |= {11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9
_MAX_KEYS = 100_000
_MAX_STRING = 16 * 2**20


@dataclass(frozen=True)
class GgufDescription:
    """What a profile needs from a GGUF it has never seen: its kind and its trained context."""

    architecture: str
    kind: str
    """`embedding` for an encoder (or a model with a pooling type and no chat template), else
    `chat`."""
    context_length: int
    has_chat_template: bool


def read_gguf_metadata(path: Path) -> dict[str, Any]:
    """The key/value header of a GGUF, read without touching its tensors (GGUFReader maps and
    parses every tensor: seconds on a large file). An array gives its first element (as the
    memory estimate wants of per-layer head counts), or None when empty; sizes are bounded, so
    a hostile header fails with ModelUnavailable instead of eating RAM."""
    import struct

    def fail(why: str) -> ModelUnavailable:
        return ModelUnavailable(f"{path} is not a readable GGUF file: {why}")

    with path.open("rb") as f:

        def read(n: int) -> bytes:
            data = f.read(n)
            if len(data) != n:
                raise fail("it ends inside its header")
            return data

        def scalar(fmt: str) -> Any:
            return struct.unpack(fmt, read(struct.calcsize(fmt)))[0]

        def string() -> str:
            n = scalar("<Q")
            if n > _MAX_STRING:
                raise fail(f"a string of {n} bytes in its header")
            return read(n).decode("utf-8", "replace")

        def value(vtype: int) -> Any:
            if vtype in _SCALARS:
                return scalar(_SCALARS[vtype])
            if vtype == _STRING:
                return string()
            if vtype == _ARRAY:  # its first element (per-layer counts: the first layer's)
                itype, count = scalar("<I"), scalar("<Q")
                if not count:
                    return None
                if itype not in _SCALARS and itype != _STRING:
                    first = value(itype)
                    for _ in range(count - 1):
                        value(itype)
                    return first
                first = value(itype)
                if itype in _SCALARS:
                    f.seek(struct.calcsize(_SCALARS[itype]) * (count - 1), 1)
                else:
                    for _ in range(count - 1):
                        f.seek(scalar("<Q"), 1)
                return first
            raise fail(f"unknown value type {vtype}")

        if read(4) != b"GGUF":
            raise fail("it does not start with GGUF")
        version = scalar("<I")
        if version < 2:
            raise fail(f"GGUF version {version} is too old")
        scalar("<Q")  # tensor count
        keys = scalar("<Q")
        if keys > _MAX_KEYS:
            raise fail(f"{keys} metadata keys")
        out: dict[str, Any] = {}
        for _ in range(keys):
            key = string()
            out[key] = value(scalar("<I"))
        return out


def describe_gguf(path: Path) -> GgufDescription:
    """Kind and context of a GGUF, for the profile of a pulled or imported model."""
    meta = read_gguf_metadata(path)
    arch = str(meta.get("general.architecture", "llama"))
    template = "tokenizer.chat_template" in meta
    pooling = f"{arch}.pooling_type" in meta
    embedding = arch in EMBEDDING_ARCHITECTURES or (pooling and not template)
    ctx = meta.get(f"{arch}.context_length", 0)
    return GgufDescription(
        architecture=arch,
        kind="embedding" if embedding else "chat",
        context_length=int(ctx) if isinstance(ctx, int) else 0,
        has_chat_template=template,
    )
