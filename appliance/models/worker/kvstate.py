"""A sequence's KV state inside the shared context, and the RAM tier of parked sessions.

`save_seq`/`load_seq` copy one sequence's cells out of and into the context
(`llama_state_seq_get_data`/`set_data`), whatever sequence id they are loaded into. `RamTier`
holds parked states in this worker's memory up to a byte budget, least recently parked out first:
what no longer fits is handed back to be written to disk (kvfile format), so restoring a
recently displaced session costs a memcpy, not a file read.
"""

from __future__ import annotations

import collections
import ctypes
import time
from dataclasses import dataclass, field
from typing import Any

import llama_cpp

from appliance.models.worker.kvfile import token_prefix_hash


@dataclass
class ParkedState:
    tokens: list[int]
    data: bytearray
    parked_at: float = field(default_factory=time.monotonic)

    @property
    def nbytes(self) -> int:
        return len(self.data)

    @property
    def prefix_hash(self) -> str:
        return token_prefix_hash(self.tokens)


def save_seq(ctx: Any, seq: int) -> bytearray:
    """The state of sequence `seq` (its cells' keys and values, positions)."""
    size = int(llama_cpp.llama_state_seq_get_size(ctx, seq))
    data = bytearray(size)
    if size:
        buf = (ctypes.c_uint8 * size).from_buffer(data)
        n = int(llama_cpp.llama_state_seq_get_data(ctx, buf, size, seq))
        del buf
        del data[n:]
    return data


def load_seq(ctx: Any, mem: Any, seq: int, data: bytearray | bytes | memoryview) -> None:
    """Replace sequence `seq` with a saved state; ValueError when llama.cpp refuses it (the
    sequence is then empty)."""
    if mem:
        llama_cpp.llama_memory_seq_rm(mem, seq, -1, -1)
    size = len(data)
    try:
        buf = (ctypes.c_uint8 * size).from_buffer(data)
    except TypeError:  # read-only bytes
        buf = (ctypes.c_uint8 * size).from_buffer_copy(data)
    n = int(llama_cpp.llama_state_seq_set_data(ctx, buf, size, seq))
    del buf
    if n == 0:
        if mem:
            llama_cpp.llama_memory_seq_rm(mem, seq, -1, -1)
        raise ValueError("llama.cpp rejected the saved state")


class RamTier:
    """Parked states by session key within `budget` bytes (0 keeps nothing in RAM)."""

    def __init__(self, budget: int) -> None:
        self.budget = max(0, budget)
        self._states: collections.OrderedDict[str, ParkedState] = collections.OrderedDict()
        self.bytes = 0
        self.hits = 0
        self.spilled = 0

    def __contains__(self, key: str) -> bool:
        return key in self._states

    def __len__(self) -> int:
        return len(self._states)

    def keys(self) -> list[str]:
        return list(self._states)

    def put(self, key: str, state: ParkedState) -> list[tuple[str, ParkedState]]:
        """Keep `state`; returns what must go to disk instead (least recently parked first,
        `state` itself when it alone is over the budget)."""
        self.drop(key)
        if state.nbytes > self.budget:
            return [(key, state)]
        self._states[key] = state
        self.bytes += state.nbytes
        out: list[tuple[str, ParkedState]] = []
        while self.bytes > self.budget:
            old_key, old = self._states.popitem(last=False)
            self.bytes -= old.nbytes
            out.append((old_key, old))
        self.spilled += len(out)
        return out

    def get(self, key: str) -> ParkedState | None:
        return self._states.get(key)

    def take(self, key: str) -> ParkedState | None:
        state = self._states.pop(key, None)
        if state is not None:
            self.bytes -= state.nbytes
            self.hits += 1
        return state

    def drop(self, key: str) -> None:
        state = self._states.pop(key, None)
        if state is not None:
            self.bytes -= state.nbytes

    def drain(self) -> list[tuple[str, ParkedState]]:
        out = list(self._states.items())
        self._states.clear()
        self.bytes = 0
        return out
