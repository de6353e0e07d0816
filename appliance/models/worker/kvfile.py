"""The on-disk format of a parked KV state: the tokens it covers plus llama.cpp's sequence state.

Layout: magic, a 4-byte header length, a JSON header (tokens, length and CRC-32 of the state),
then the raw state bytes. Writes are atomic (temp file + rename). A damaged or truncated file
raises ValueError, and the caller falls back to a full prefill.
"""

from __future__ import annotations

import array
import hashlib
import json
import mmap
import os
import struct
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import TypeVar

from appliance.private import open_private, private_dir

B = TypeVar("B", bytes, memoryview)

MAGIC = b"APPLIANCE-KV1\n"
_LEN = struct.Struct(">I")


def token_prefix_hash(tokens: Sequence[int]) -> str:
    """The hash that names the token prefix a state covers (sha256 of the ids as int32)."""
    return hashlib.sha256(array.array("i", tokens).tobytes()).hexdigest()


def write_kv_file(
    path: str | os.PathLike[str], tokens: list[int], state: memoryview | bytes | bytearray
) -> int:
    """Write atomically; returns the file size in bytes."""
    header = json.dumps(
        {
            "n_tokens": len(tokens),
            "tokens": tokens,
            "state_bytes": len(state),
            "crc32": zlib.crc32(state),
        }
    ).encode()
    target = Path(path)
    if not target.parent.is_dir():
        private_dir(target.parent)
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    with os.fdopen(open_private(tmp), "wb") as f:  # 0600: a session's context, readable as text
        f.write(MAGIC)
        f.write(_LEN.pack(len(header)))
        f.write(header)
        f.write(state)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, target)
    return len(MAGIC) + _LEN.size + len(header) + len(state)


def read_kv_file(path: str | os.PathLike[str]) -> tuple[list[int], bytes]:
    """Return (tokens, state); ValueError if the file is not an intact KV file."""
    return _checked(Path(path).read_bytes())


def map_kv_file(path: str | os.PathLike[str]) -> tuple[list[int], memoryview]:
    """Like read_kv_file, but the state is a writable view of a private (copy-on-write) mapping
    of the file: no copies of a state that can be tens of MB, which is most of a restore's time."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size < len(MAGIC) + _LEN.size:
            raise ValueError("not a KV state file")
        mapped = mmap.mmap(f.fileno(), size, access=mmap.ACCESS_COPY)
    return _checked(memoryview(mapped))


def _checked(data: B) -> tuple[list[int], B]:
    if bytes(data[: len(MAGIC)]) != MAGIC or len(data) < len(MAGIC) + _LEN.size:
        raise ValueError("not a KV state file")
    off = len(MAGIC)
    (hlen,) = _LEN.unpack_from(data, off)
    off += _LEN.size
    try:
        header = json.loads(bytes(data[off : off + hlen]))
    except ValueError as exc:
        raise ValueError("KV state header is damaged") from exc
    state = data[off + hlen :]
    if len(state) != header.get("state_bytes") or zlib.crc32(state) != header.get("crc32"):
        raise ValueError("KV state is truncated or damaged (checksum mismatch)")
    tokens = header.get("tokens")
    if not isinstance(tokens, list) or len(tokens) != header.get("n_tokens"):
        raise ValueError("KV state token list is damaged")
    return [int(t) for t in tokens], state
