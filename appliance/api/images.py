"""Image routes: list, inspect, pull (202, progress as `image.pull` events), import, remove, prune.

Handlers hand the request to ImageService (appliance.sandbox.images.service) and return its
structs; errors are ApplianceErrors that appliance.api.errors turns into responses. The import
takes the archive's raw bytes (`Content-Type: application/octet-stream`, capped by
sandbox.max_import_mb at the browser boundary), written to a private temporary file under the
store before anything reads it.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from typing import Any

from litestar import Controller, Request, delete, get, post
from litestar.di import NamedDependency, Provide
from litestar.params import FromPath, FromQuery, JSONBody

from appliance.sandbox.errors import UploadTooLarge
from appliance.sandbox.images.reference import parse_ref
from appliance.sandbox.images.service import (
    ImageOut,
    ImageService,
    ImportResult,
    PruneResult,
    PullRequest,
    PullStatus,
)


def provide_images(appliance: NamedDependency[Any]) -> ImageService:
    service: ImageService = appliance.sandboxes.images
    return service


class ImageController(Controller):
    tags = ["images"]
    dependencies = {"images": Provide(provide_images, sync_to_thread=False)}

    @get("/api/images")
    async def list_images(self, images: NamedDependency[ImageService]) -> list[ImageOut]:
        return await images.list_images()

    @get("/api/images/pulls")
    async def pulls(self, images: NamedDependency[ImageService]) -> list[PullStatus]:
        return images.pull_statuses()

    @post("/api/images/pull", status_code=202)
    async def pull(
        self, images: NamedDependency[ImageService], data: JSONBody[PullRequest]
    ) -> PullStatus:
        return images.start_pull(data)

    @post(
        "/api/images/import",
        status_code=201,
        request_max_body_size=None,  # the boundary caps it at sandbox.max_import_mb
        opt={"body": "image"},
    )
    async def import_archive(
        self,
        images: NamedDependency[ImageService],
        request: Request[Any, Any, Any],
        name: FromQuery[str | None] = None,
    ) -> ImportResult:
        if name:
            parse_ref(name)  # a bad name is refused before the archive is read
        path = images.store.root / "partial" / f"upload-{secrets.token_hex(8)}.tar"
        try:
            size = 0
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as out:
                async for chunk in request.stream():
                    size += len(chunk)
                    if size > images.max_import_bytes:
                        raise UploadTooLarge(
                            "the archive is larger than sandbox.max_import_mb; raise it or "
                            "import a smaller image"
                        )
                    out.write(chunk)
            return await images.import_file(path, name or None, label="the uploaded archive")
        finally:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    @post("/api/images/prune", status_code=200)
    async def prune(self, images: NamedDependency[ImageService]) -> PruneResult:
        return await images.prune()

    @get("/api/images/{ref:path}")
    async def inspect(self, images: NamedDependency[ImageService], ref: FromPath[str]) -> ImageOut:
        return await images.inspect(ref.lstrip("/"))

    @delete("/api/images/{ref:path}", status_code=200)
    async def remove(self, images: NamedDependency[ImageService], ref: FromPath[str]) -> list[str]:
        return await images.remove(ref.lstrip("/"))
