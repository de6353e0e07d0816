"""The structured outputs of the MCP tools.

They are pydantic models because the SDK derives each tool's `outputSchema` from its return
annotation; each is built from the service's own answer (a msgspec struct or an OpenAI-shaped
dict) in one place, `from_service`, so the wire shape is spelled once.
"""

from __future__ import annotations

import base64
from typing import Any, Literal

import msgspec
from pydantic import BaseModel, Field

from appliance.openai.shapes import ChatCompletion, EmbeddingList
from appliance.sandbox.service import RunResult, SandboxInfo


class RunOutput(BaseModel):
    """A finished program: what `POST /api/run` and `POST /api/sandboxes/{id}/exec` answer."""

    status: Literal["ok", "error", "timeout", "oom", "killed"]
    exit_code: int | None
    signal: int | None
    stdout: str
    stderr: str
    stdout_truncated: bool
    stderr_truncated: bool
    duration_ms: float
    peak_memory_mb: float
    cpu_ms: float = 0.0
    files: dict[str, str] = Field(default_factory=dict)
    """The fetched workspace files, base64."""
    reason: str | None = None
    """Which limit ended the run, in words, when one did."""
    phase: Literal["compile", "run"] = "run"
    result: str | None = None
    """Stateful cells: the repr of the cell's final expression."""
    restarted: bool = False

    @classmethod
    def from_service(cls, result: RunResult) -> RunOutput:
        return cls.model_validate(msgspec.to_builtins(result))

    def summary(self) -> str:
        """The text content next to the structured one, for clients that show only text."""
        parts = [f"status: {self.status} (exit {self.exit_code})"]
        if self.reason:
            parts.append(f"reason: {self.reason}")
        if self.stdout:
            parts.append("stdout:\n" + self.stdout)
        if self.stderr:
            parts.append("stderr:\n" + self.stderr)
        if self.result is not None:
            parts.append("result: " + self.result)
        return "\n".join(parts)


class SandboxOutput(BaseModel):
    """A stateful sandbox."""

    id: str
    language: str
    interpreter: bool
    """Whether variables persist between execs (a live REPL), not only files."""
    busy: bool
    execs: int
    expires_in_s: float
    """Idle time left before the sandbox is reaped."""
    timeout_s: float
    memory_mb: int
    network: bool

    @classmethod
    def from_service(cls, info: SandboxInfo) -> SandboxOutput:
        data: dict[str, Any] = msgspec.to_builtins(info)
        return cls.model_validate({k: data[k] for k in cls.model_fields})


class FileOutput(BaseModel):
    """A workspace file written."""

    path: str
    size: int


class FileContent(BaseModel):
    """A workspace file read: UTF-8 text in `text`, anything else base64 in `base64`."""

    path: str
    size: int
    text: str | None = None
    base64: str | None = None

    @classmethod
    def of(cls, path: str, data: bytes) -> FileContent:
        try:
            return cls(path=path, size=len(data), text=data.decode("utf-8"))
        except UnicodeDecodeError:
            return cls(path=path, size=len(data), base64=base64.b64encode(data).decode("ascii"))


class Deleted(BaseModel):
    id: str
    deleted: bool = True


class ModelEntry(BaseModel):
    id: str
    kind: str
    """chat, completion or embedding."""
    state: str
    """unloaded, loading, ready, ..."""
    fetched: bool
    """Whether the model file is on this machine (else the first call fetches it)."""
    context_size: int


class ModelsOutput(BaseModel):
    models: list[ModelEntry]


class ChatOutput(BaseModel):
    """One chat completion."""

    model: str
    content: str
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int

    @classmethod
    def from_service(cls, answer: ChatCompletion) -> ChatOutput:
        choice = answer.choices[0]
        return cls(
            model=answer.model,
            content=choice.message.content or "",
            finish_reason=choice.finish_reason,
            prompt_tokens=answer.usage.prompt_tokens,
            completion_tokens=answer.usage.completion_tokens,
        )


class EmbedOutput(BaseModel):
    model: str
    dimensions: int
    embeddings: list[list[float]]
    """One vector per input, in input order."""

    @classmethod
    def from_service(cls, answer: EmbeddingList) -> EmbedOutput:
        rows = sorted(answer.data, key=lambda d: d.index)
        # the tool never asks for encoding_format "base64", so every vector is floats
        vectors = [
            [float(x) for x in d.embedding] for d in rows if not isinstance(d.embedding, str)
        ]
        return cls(
            model=answer.model,
            dimensions=len(vectors[0]) if vectors else 0,
            embeddings=vectors,
        )


class AgentTurnOutput(BaseModel):
    """A turn of an agent's session: the messages it stored (tool calls and results included)."""

    session_id: str
    """Pass it back as `session_id` to continue the conversation."""
    agent: str
    reply: str
    """The assistant's final message."""
    messages: list[dict[str, Any]]
    finish_reason: str | None = None
