"""The tiny test GGUF in real llama.cpp: loads, generates deterministically, round-trips UTF-8.

Every fast model test in the suite leans on these properties, so they are checked once here. The
malformed variants are loaded in a child process, since one of them aborts the process by design.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import llama_cpp
import pytest

from tests.fixtures.tinymodel import (
    BOS_ID,
    BYTE_TOKEN_BASE,
    IM_END_ID,
    IM_START_ID,
    write_malformed_gguf,
)


@pytest.fixture(scope="module")
def tiny(tiny_model_path: Path) -> Any:
    return llama_cpp.Llama(str(tiny_model_path), n_ctx=512, verbose=False, seed=0)


def test_generates_the_same_tokens_at_temperature_zero(tiny: Any, tiny_model_path: Path) -> None:
    first = tiny.create_completion("hello world", max_tokens=16, temperature=0.0)
    other = llama_cpp.Llama(str(tiny_model_path), n_ctx=512, verbose=False, seed=123)
    second = other.create_completion("hello world", max_tokens=16, temperature=0.0)
    assert first["usage"]["completion_tokens"] == 16
    assert first["choices"][0]["text"] == second["choices"][0]["text"]
    assert first["choices"][0]["text"].strip()


@pytest.mark.parametrize(
    "text", ["hello world", "héllo wörld — 世界 🎉", "tabs\tand\nnewlines", "<not special>"]
)
def test_any_utf8_round_trips_through_byte_fallback(tiny: Any, text: str) -> None:
    ids = tiny.tokenize(text.encode(), add_bos=False)
    assert tiny.detokenize(ids).decode().removeprefix(" ") == text


def test_unknown_characters_use_byte_tokens(tiny: Any) -> None:
    ids = tiny.tokenize("世".encode(), add_bos=False, special=False)
    byte_ids = [i for i in ids if BYTE_TOKEN_BASE <= i < BYTE_TOKEN_BASE + 256]
    assert byte_ids == [BYTE_TOKEN_BASE + b for b in "世".encode()]


def test_chatml_markers_are_single_control_tokens(tiny: Any) -> None:
    ids = tiny.tokenize(b"<|im_start|>user\nhi<|im_end|>", add_bos=True, special=True)
    assert ids[0] == BOS_ID and ids[1] == IM_START_ID and ids[-1] == IM_END_ID
    assert tiny.metadata["tokenizer.chat_template"].startswith("{% for message in messages %}")


def test_chat_completion_through_the_template(tiny: Any) -> None:
    out = tiny.create_chat_completion(
        [{"role": "user", "content": "hi"}], max_tokens=8, temperature=0.0
    )
    assert out["choices"][0]["message"]["role"] == "assistant"
    assert out["usage"]["prompt_tokens"] > 5


LOAD = "import sys, llama_cpp; llama_cpp.Llama(sys.argv[1], n_ctx=256, verbose=False)"


def load_in_child(path: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "GGML_NO_BACKTRACE": "1"}
    return subprocess.run(
        [sys.executable, "-c", LOAD, str(path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


def test_abort_variant_kills_the_loading_process(tmp_path: Path) -> None:
    result = load_in_child(write_malformed_gguf(tmp_path / "bad.gguf", kind="abort"))
    assert result.returncode == -signal.SIGABRT, result.stderr[-2000:]


def test_truncated_variant_is_refused_with_an_error(tmp_path: Path) -> None:
    result = load_in_child(write_malformed_gguf(tmp_path / "cut.gguf", kind="truncated"))
    assert result.returncode == 1
    assert "Failed to load model" in result.stderr
