"""The MCP tools' structured outputs, built from the services' answers (appliance.mcp.shapes)."""

from __future__ import annotations

import base64

import msgspec

from appliance.mcp.shapes import ChatOutput, EmbedOutput, FileContent, RunOutput
from appliance.openai.shapes import ChatCompletion, EmbeddingList
from appliance.sandbox.service import RunResult


def test_a_run_result_keeps_every_field_and_its_files_as_base64() -> None:
    result = RunResult(
        status="timeout",
        exit_code=None,
        signal=9,
        stdout="partial",
        stderr="",
        stdout_truncated=False,
        stderr_truncated=False,
        duration_ms=1000.0,
        peak_memory_mb=3.5,
        files={"out.bin": b"\x00\xff"},
        reason="the run took longer than 1 s (timeout_s)",
    )
    out = RunOutput.from_service(result)
    assert out.status == "timeout" and out.signal == 9
    assert base64.b64decode(out.files["out.bin"]) == b"\x00\xff"
    text = out.summary()
    assert "timeout" in text and "timeout_s" in text and "partial" in text


def test_a_file_is_text_when_it_is_utf8_else_base64() -> None:
    assert FileContent.of("a.txt", "héllo".encode()).text == "héllo"
    binary = FileContent.of("b.bin", b"\xff\xfe")
    assert binary.text is None and binary.base64 == "//4=" and binary.size == 2


def test_chat_and_embedding_answers_are_read_from_the_openai_shapes() -> None:
    chat = ChatOutput.from_service(
        msgspec.convert(
            {
                "id": "chatcmpl-1",
                "object": "chat.completion",
                "created": 1,
                "model": "m",
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": "hi"},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
                "timings": {},
            },
            ChatCompletion,
        )
    )
    assert (chat.content, chat.finish_reason, chat.completion_tokens) == ("hi", "stop", 1)
    emb = EmbedOutput.from_service(
        msgspec.convert(
            {
                "object": "list",
                "model": "e",
                "data": [
                    {"object": "embedding", "index": 1, "embedding": [0, 1]},
                    {"object": "embedding", "index": 0, "embedding": [2, 3]},
                ],
                "usage": {"prompt_tokens": 2, "total_tokens": 2},
            },
            EmbeddingList,
        )
    )
    assert emb.embeddings == [[2.0, 3.0], [0.0, 1.0]] and emb.dimensions == 2
