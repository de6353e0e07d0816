"""The MCP tools: each a typed function with a docstring (the SDK derives the input schema from
the signature and the output schema from the return type), calling the daemon's services in
process, with no HTTP hop.

Failures a caller can cause (an unknown model, a missing sandbox, a limit) are `ApplianceError`s;
`tool_errors` turns each into a `ToolError`, which the SDK answers as an `isError` result carrying
the error's message (which says what to do next). Only malformed calls (an unknown tool, arguments
that fail the input schema) are refused by the SDK itself.

Sandboxes created through MCP belong to the MCP session that created them: on a session of the
handshake protocols (2025-06-18, 2025-11-25) they are deleted when the session ends (the client's
DELETE, or the SDK's idle timeout); a 2026-07-28 request has no session, so its sandboxes live
until their own idle expiry (`expires_in_s`), like those of `POST /api/sandboxes`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Annotated, Any

import msgspec
from mcp.server.mcpserver import Context
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import CallToolResult, TextContent
from mcp.types.version import HANDSHAKE_PROTOCOL_VERSIONS
from pydantic import Field

from appliance.app import Appliance
from appliance.errors import ApplianceError
from appliance.mcp.shapes import (
    AgentTurnOutput,
    ChatOutput,
    Deleted,
    EmbedOutput,
    FileContent,
    FileOutput,
    ModelEntry,
    ModelsOutput,
    RunOutput,
    SandboxOutput,
)
from appliance.openai.shapes import ChatCompletionRequest, EmbeddingRequest
from appliance.sandbox.service import CreateSandboxRequest, ExecRequest, RunRequest
from appliance.sessions.service import CreateSessionRequest, TurnRequest

log = logging.getLogger("appliance.mcp")

Language = Annotated[str, Field(description="python, javascript, bash, c, ... (see list_models)")]
Files = Annotated[
    dict[str, str] | None,
    Field(description="Files to put in the workspace first: relative path -> base64 content"),
]
Timeout = Annotated[
    float | None, Field(description="Seconds before the program is stopped (the daemon caps it)")
]
Image = Annotated[
    str | None,
    Field(
        description="Run inside this OCI image's root filesystem (a reference from GET "
        "/api/images) instead of the host's toolchains; the language's interpreter must be in it"
    ),
]


@contextmanager
def tool_errors() -> Iterator[None]:
    """An ApplianceError (or a body its struct refuses) as a ToolError: an `isError` result."""
    try:
        yield
    except ApplianceError as exc:
        raise ToolError(exc.message) from exc
    except msgspec.ValidationError as exc:
        raise ToolError(f"{exc}; fix the argument and call again") from exc


def _build(cls: type[Any], fields: dict[str, Any]) -> Any:
    """A service request struct from the tool's arguments, unset ones left to its defaults."""
    return msgspec.convert({k: v for k, v in fields.items() if v is not None}, cls)


def _text_and_structured(text: str, out: Any) -> CallToolResult:
    return CallToolResult(
        content=[TextContent(type="text", text=text)],
        structured_content=out.model_dump(mode="json"),
    )


class ApplianceTools:
    """The tool functions, bound to one Appliance."""

    def __init__(self, appliance: Appliance) -> None:
        self.appliance = appliance

    # --- code runs and sandboxes ------------------------------------------------------------------

    async def run_code(
        self,
        language: Language,
        code: str,
        stdin: str | None = None,
        files: Files = None,
        fetch_files: list[str] | None = None,
        timeout_s: Timeout = None,
        image: Image = None,
    ) -> Annotated[CallToolResult, RunOutput]:
        """Run a program once in a fresh sandbox (no network, a private workspace) and return its
        output: the `POST /api/run` contract."""
        with tool_errors():
            req = _build(
                RunRequest,
                {
                    "language": language,
                    "code": code,
                    "image": image,
                    "stdin": stdin,
                    "files": files,
                    "fetch_files": fetch_files,
                    "timeout_s": timeout_s,
                },
            )
            out = RunOutput.from_service(await self.appliance.sandboxes.run(req))
        return _text_and_structured(out.summary(), out)

    async def sandbox_create(
        self,
        language: Language,
        ctx: Context,
        timeout_s: Annotated[
            float | None, Field(description="Default timeout of each exec")
        ] = None,
        memory_mb: int | None = None,
        image: Image = None,
    ) -> SandboxOutput:
        """Create a stateful sandbox: a workspace (and, for Python, a live interpreter) kept between
        sandbox_exec calls. It is deleted when this MCP session ends, or after its idle time."""
        with tool_errors():
            req = _build(
                CreateSandboxRequest,
                {
                    "language": language,
                    "timeout_s": timeout_s,
                    "memory_mb": memory_mb,
                    "image": image,
                },
            )
            info = await self.appliance.sandboxes.create(req)
        self._reap_with_session(ctx, info.id)
        return SandboxOutput.from_service(info)

    async def sandbox_exec(
        self,
        sandbox_id: str,
        code: str,
        stdin: str | None = None,
        timeout_s: Timeout = None,
    ) -> Annotated[CallToolResult, RunOutput]:
        """Run code in a stateful sandbox (variables persist for interpreter languages)."""
        with tool_errors():
            req = _build(ExecRequest, {"code": code, "stdin": stdin, "timeout_s": timeout_s})
            out = RunOutput.from_service(await self.appliance.sandboxes.exec(sandbox_id, req))
        return _text_and_structured(out.summary(), out)

    async def sandbox_read_file(self, sandbox_id: str, path: str) -> FileContent:
        """Read a file of a sandbox's workspace (UTF-8 text, else base64)."""
        with tool_errors():
            data = await self.appliance.sandboxes.get_file(sandbox_id, path)
        return FileContent.of(path, data)

    async def sandbox_write_file(
        self,
        sandbox_id: str,
        path: str,
        text: Annotated[str | None, Field(description="The content as text")] = None,
        base64: Annotated[str | None, Field(description="Or the content as base64")] = None,
    ) -> FileOutput:
        """Write a file into a sandbox's workspace (give `text` or `base64`)."""
        import base64 as b64
        import binascii

        if (text is None) == (base64 is None):
            raise ToolError("give the file's content as exactly one of `text` and `base64`")
        try:
            data = text.encode() if text is not None else b64.b64decode(base64 or "", validate=True)
        except binascii.Error as exc:
            raise ToolError(
                f"`base64` is not valid base64 ({exc}); encode the bytes again"
            ) from exc
        with tool_errors():
            self.appliance.sandboxes.check_upload(sandbox_id, path)
            if len(data) > self.appliance.sandboxes.max_file_bytes:
                mib = self.appliance.sandboxes.max_file_bytes // (1024 * 1024)
                raise ToolError(f"the file is larger than {mib} MiB (sandbox.max_file_mb)")
            info = await self.appliance.sandboxes.put_file(sandbox_id, path, data)
        return FileOutput(path=info.path, size=info.size)

    async def sandbox_delete(self, sandbox_id: str) -> Deleted:
        """Delete a stateful sandbox and its workspace."""
        with tool_errors():
            await self.appliance.sandboxes.delete(sandbox_id)
        return Deleted(id=sandbox_id)

    def _reap_with_session(self, ctx: Context, sandbox_id: str) -> None:
        """Delete the sandbox when the MCP session that made it ends (handshake protocols only)."""
        connection = getattr(ctx.request_context.session, "_connection", None)
        if connection is None or connection.protocol_version not in HANDSHAKE_PROTOCOL_VERSIONS:
            return  # a 2026-07-28 request is its own connection: the idle expiry reaps instead
        sandboxes = self.appliance.sandboxes

        async def reap() -> None:
            with suppress(ApplianceError):  # deleted already (sandbox_delete, its idle expiry)
                await sandboxes.delete(sandbox_id)

        connection.exit_stack.push_async_callback(reap)

    # --- models and agents ------------------------------------------------------------------------

    async def list_models(self) -> ModelsOutput:
        """The models this appliance serves, with their kind and state."""
        with tool_errors():
            entries = [
                ModelEntry(
                    id=m["id"],
                    kind=m["kind"],
                    state=m["state"],
                    fetched=bool(m["fetched"]),
                    context_size=int(m["context_size"]),
                )
                for m in self.appliance.models.list()
            ]
        return ModelsOutput(models=entries)

    async def chat(
        self,
        model: str,
        prompt: Annotated[str, Field(description="The user's message")],
        system: Annotated[str | None, Field(description="A system message first")] = None,
        max_tokens: int | None = None,
        temperature: float | None = None,
        seed: int | None = None,
    ) -> ChatOutput:
        """One chat completion from a named model (see list_models)."""
        messages = [{"role": "user", "content": prompt}]
        if system:
            messages.insert(0, {"role": "system", "content": system})
        with tool_errors():
            req = _build(
                ChatCompletionRequest,
                {
                    "model": model,
                    "messages": messages,
                    "max_tokens": max_tokens,
                    "temperature": temperature,
                    "seed": seed,
                },
            )
            answer = await self.appliance.chat.chat_completion(req.to_params())
        return ChatOutput.from_service(answer)

    async def embed(
        self,
        model: str,
        input: Annotated[list[str], Field(description="The texts to embed", min_length=1)],
    ) -> EmbedOutput:
        """Embedding vectors of texts from a named embedding model."""
        with tool_errors():
            req = _build(EmbeddingRequest, {"model": model, "input": input})
            answer = await self.appliance.chat.embeddings(req.to_params())
        return EmbedOutput.from_service(answer)

    async def ask_agent(
        self,
        agent: Annotated[str, Field(description="The agent's name or id")],
        message: str,
        session_id: Annotated[
            str | None, Field(description="Continue this session (else a new one is started)")
        ] = None,
        max_tokens: int | None = None,
        temperature: float | None = None,
        seed: int | None = None,
    ) -> AgentTurnOutput:
        """A turn of a named agent: in a new session, or in `session_id`; its tool calls run as
        in the agent's own sessions, and the turn is stored in the session's transcript."""
        sessions = self.appliance.sessions
        with tool_errors():
            if session_id is None:
                session = await sessions.create(CreateSessionRequest(agent=agent, title="mcp"))
                session_id = session.id
            req = _build(
                TurnRequest,
                {
                    "content": message,
                    "max_tokens": max_tokens,
                    "temperature": temperature,
                    "seed": seed,
                    "stream": False,
                },
            )
            result = await sessions.run_turn(session_id, req)
        messages: list[dict[str, Any]] = list(result["messages"])
        reply = next(
            (m.get("content") or "" for m in reversed(messages) if m.get("role") == "assistant"),
            "",
        )
        return AgentTurnOutput(
            session_id=session_id,
            agent=agent,
            reply=reply,
            messages=messages,
            finish_reason=result["done"].get("finish_reason"),
        )

    def all(self) -> list[Any]:
        return [
            self.run_code,
            self.sandbox_create,
            self.sandbox_exec,
            self.sandbox_read_file,
            self.sandbox_write_file,
            self.sandbox_delete,
            self.list_models,
            self.chat,
            self.embed,
            self.ask_agent,
        ]
