"""The tiny test GGUF is what the other tests assume it is: deterministic, GQA, byte-complete vocab.

Read back with the `gguf` package's reader; llama.cpp's view of it is
tests/integration/test_tinymodel_llama.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gguf
import pytest

from tests.fixtures.tinymodel import (
    CHATML_TEMPLATE,
    IM_END_ID,
    IM_START_ID,
    write_malformed_gguf,
    write_tiny_llama,
)


def fields_of(path: Path) -> dict[str, Any]:
    reader = gguf.GGUFReader(path)
    return {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}


def test_same_seed_same_bytes_other_seed_other_weights(tmp_path: Path) -> None:
    a = write_tiny_llama(tmp_path / "a.gguf", seed=7).read_bytes()
    b = write_tiny_llama(tmp_path / "b.gguf", seed=7).read_bytes()
    c = write_tiny_llama(tmp_path / "c.gguf", seed=8).read_bytes()
    assert a == b
    assert a != c and len(a) == len(c)


def test_llama_arch_with_grouped_query_attention(tiny_model_path: Path) -> None:
    f = fields_of(tiny_model_path)
    assert f["general.architecture"] == "llama"
    assert f["llama.attention.head_count"] == 4
    assert f["llama.attention.head_count_kv"] == 2
    assert f["llama.context_length"] == 512
    assert f["llama.block_count"] == 2
    tensors = {t.name: t for t in gguf.GGUFReader(tiny_model_path).tensors}
    assert list(tensors["blk.0.attn_k.weight"].shape) == [64, 32]  # ggml order: n_embd, n_embd_kv


def test_vocab_has_every_byte_and_chatml_control_tokens(tiny_model_path: Path) -> None:
    f = fields_of(tiny_model_path)
    tokens, types = f["tokenizer.ggml.tokens"], f["tokenizer.ggml.token_type"]
    assert f["tokenizer.ggml.model"] == "llama"
    byte_tokens = {t for t, k in zip(tokens, types, strict=True) if k == gguf.TokenType.BYTE}
    assert byte_tokens == {f"<0x{b:02X}>" for b in range(256)}
    assert tokens[IM_START_ID] == "<|im_start|>" and types[IM_START_ID] == gguf.TokenType.CONTROL
    assert tokens[IM_END_ID] == "<|im_end|>" and types[IM_END_ID] == gguf.TokenType.CONTROL
    normal = [t for t, k in zip(tokens, types, strict=True) if k == gguf.TokenType.NORMAL]
    assert len(normal) > 300
    assert len(set(tokens)) == len(tokens)
    assert f["tokenizer.chat_template"] == CHATML_TEMPLATE
    assert len(f["tokenizer.ggml.scores"]) == len(tokens)


def test_malformed_variants(tmp_path: Path) -> None:
    f = fields_of(write_malformed_gguf(tmp_path / "abort.gguf"))
    assert f["llama.attention.head_count"] % f["llama.attention.head_count_kv"] != 0
    good = write_tiny_llama(tmp_path / "good.gguf").stat().st_size
    truncated = write_malformed_gguf(tmp_path / "cut.gguf", kind="truncated")
    assert truncated.read_bytes()[:4] == b"GGUF"
    assert truncated.stat().st_size < good
    with pytest.raises(ValueError, match="unknown kind"):
        write_malformed_gguf(tmp_path / "x.gguf", kind="other")  # type: ignore[arg-type]
