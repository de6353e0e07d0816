"""Sandbox routes: one-shot runs, languages, stateful sandboxes and their workspace files.

Handlers only hand the typed body to SandboxService; errors are ApplianceErrors that
appliance.api.errors turns into HTTP responses. The service comes from the `appliance`
dependency (anything with a `.sandboxes` attribute), so `create_sandbox_app` can serve these
routes without the rest of the daemon (tests, `appliance bench sandbox`).
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from litestar import Controller, Litestar, Request, Response, delete, get, post, put
from litestar.di import NamedDependency, Provide
from litestar.params import FromPath, JSONBody

from appliance.api.disconnect import unless_disconnected
from appliance.api.errors import EXCEPTION_HANDLERS
from appliance.api.images import ImageController
from appliance.sandbox.batch import BatchRequest, BatchResult
from appliance.sandbox.errors import UploadTooLarge
from appliance.sandbox.service import (
    CreateSandboxRequest,
    ExecRequest,
    FileInfo,
    LanguageOut,
    RunRequest,
    RunResult,
    SandboxInfo,
    SandboxService,
)

JSON_BODY_LIMIT = 128 * 1024 * 1024
"""Largest body of the sandbox-only app (create_sandbox_app). In the daemon's app the browser
boundary caps bodies from the config instead, by the class each handler names in `opt["body"]`:
"run" for the JSON routes that carry files as base64, "upload" for the raw file upload."""


def provide_sandboxes(appliance: NamedDependency[Any]) -> SandboxService:
    service: SandboxService = appliance.sandboxes
    return service


def _workspace_path(path: str) -> str:
    # the route's {path:path} keeps the slash that separates it from /files
    return path[1:] if path.startswith("/") else path


async def read_upload(request: Request[Any, Any, Any], limit: int) -> bytes:
    """The request body, refused as soon as it grows past `limit` bytes."""
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise UploadTooLarge(
                f"the upload is larger than {limit // (1024 * 1024)} MB (sandbox.max_file_mb)"
            )
        chunks.append(chunk)
    return b"".join(chunks)


class SandboxController(Controller):
    tags = ["sandboxes"]
    dependencies = {"sandboxes": Provide(provide_sandboxes, sync_to_thread=False)}

    @post("/api/run", status_code=200, opt={"body": "run"})
    async def run(
        self, sandboxes: NamedDependency[SandboxService], data: JSONBody[RunRequest]
    ) -> RunResult:
        return await sandboxes.run(data)

    @post("/api/run/batch", status_code=200, opt={"body": "run"})
    async def run_batch(
        self,
        request: Request[Any, Any, Any],
        sandboxes: NamedDependency[SandboxService],
        data: JSONBody[BatchRequest],
    ) -> BatchResult:
        # a client that gives up on its batch cancels the cases still running or waiting
        return await unless_disconnected(request, sandboxes.run_batch(data))

    @get("/api/sandboxes/languages")
    async def languages(self, sandboxes: NamedDependency[SandboxService]) -> list[LanguageOut]:
        return await sandboxes.languages()

    @post("/api/sandboxes", status_code=201)
    async def create(
        self, sandboxes: NamedDependency[SandboxService], data: JSONBody[CreateSandboxRequest]
    ) -> SandboxInfo:
        return await sandboxes.create(data)

    @get("/api/sandboxes")
    async def list_sandboxes(self, sandboxes: NamedDependency[SandboxService]) -> list[SandboxInfo]:
        return sandboxes.list_sandboxes()

    @get("/api/sandboxes/{sandbox_id:str}")
    async def get_sandbox(
        self, sandboxes: NamedDependency[SandboxService], sandbox_id: FromPath[str]
    ) -> SandboxInfo:
        return sandboxes.get(sandbox_id)

    @post(
        "/api/sandboxes/{sandbox_id:str}/exec",
        status_code=200,
        opt={"body": "run"},
    )
    async def exec(
        self,
        sandboxes: NamedDependency[SandboxService],
        sandbox_id: FromPath[str],
        data: JSONBody[ExecRequest],
    ) -> RunResult:
        return await sandboxes.exec(sandbox_id, data)

    @get("/api/sandboxes/{sandbox_id:str}/files")
    async def list_files(
        self, sandboxes: NamedDependency[SandboxService], sandbox_id: FromPath[str]
    ) -> list[FileInfo]:
        return await sandboxes.list_files(sandbox_id)

    @get("/api/sandboxes/{sandbox_id:str}/files/{path:path}", media_type="application/octet-stream")
    async def download(
        self,
        sandboxes: NamedDependency[SandboxService],
        sandbox_id: FromPath[str],
        path: FromPath[str],
    ) -> Response[bytes]:
        data = await sandboxes.get_file(sandbox_id, _workspace_path(path))
        return Response(data, media_type="application/octet-stream")

    @put(
        "/api/sandboxes/{sandbox_id:str}/files/{path:path}",
        request_max_body_size=None,  # read_upload stops at sandbox.max_file_mb
        opt={"body": "upload"},
    )
    async def upload(
        self,
        sandboxes: NamedDependency[SandboxService],
        sandbox_id: FromPath[str],
        path: FromPath[str],
        request: Request[Any, Any, Any],
    ) -> FileInfo:
        sandboxes.check_upload(sandbox_id, _workspace_path(path))
        data = await read_upload(request, sandboxes.max_file_bytes)
        return await sandboxes.put_file(sandbox_id, _workspace_path(path), data)

    @delete("/api/sandboxes/{sandbox_id:str}", status_code=204)
    async def destroy(
        self, sandboxes: NamedDependency[SandboxService], sandbox_id: FromPath[str]
    ) -> None:
        await sandboxes.delete(sandbox_id)


def create_sandbox_app(service: SandboxService, *, manage_lifecycle: bool = True) -> Litestar:
    """An HTTP app with the sandbox routes only, around one SandboxService."""
    host = SimpleNamespace(sandboxes=service)

    def provide_appliance() -> Any:
        return host

    return Litestar(
        route_handlers=[SandboxController, ImageController],
        dependencies={"appliance": Provide(provide_appliance, sync_to_thread=False)},
        exception_handlers=EXCEPTION_HANDLERS,
        on_startup=[service.start] if manage_lifecycle else [],
        on_shutdown=[service.stop] if manage_lifecycle else [],
        openapi_config=None,
        debug=False,
        request_max_body_size=JSON_BODY_LIMIT,
    )
