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


def _field(reader: Any, key: str, default: int | str | None = None) -> Any:
    f = reader.fields.get(key)
    if f is None:
        return default
    value = f.contents()
    if isinstance(value, list):
        value = value[0] if value else default
    return value


@functools.lru_cache(maxsize=128)
def _read(path: str, mtime_ns: int, size: int) -> GgufInfo:
    from gguf import GGUFReader

    try:
        reader = GGUFReader(path, "r")
    except Exception as exc:  # gguf raises ValueError, struct.error, etc. on a malformed file
        raise ModelUnavailable(f"{path} is not a readable GGUF file: {exc}") from exc
    arch = str(_field(reader, "general.architecture", "llama"))
    n_embd = int(_field(reader, f"{arch}.embedding_length", 0) or 0)
    n_head = int(_field(reader, f"{arch}.attention.head_count", 1) or 1)
    n_head_kv = int(_field(reader, f"{arch}.attention.head_count_kv", n_head) or n_head)
    head_dim = n_embd // n_head if n_head else 0
    return GgufInfo(
        architecture=arch,
        file_bytes=size,
        n_layer=int(_field(reader, f"{arch}.block_count", 0) or 0),
        n_embd=n_embd,
        n_head=n_head,
        n_head_kv=n_head_kv,
        head_dim_k=int(_field(reader, f"{arch}.attention.key_length", head_dim) or head_dim),
        head_dim_v=int(_field(reader, f"{arch}.attention.value_length", head_dim) or head_dim),
        context_length=int(_field(reader, f"{arch}.context_length", 0) or 0),
    )


def read_gguf_info(path: Path) -> GgufInfo:
    st = os.stat(path)
    return _read(str(path), st.st_mtime_ns, st.st_size)
