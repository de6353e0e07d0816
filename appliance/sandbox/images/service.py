"""ImageService: the image store as the API and the sandboxes use it.

It owns the store (store.py) and every blocking step on it (imports, unpacking, removal) runs in
a thread, one at a time per store. Pulls run as background tasks (one per reference at a time)
that report `image.pull` events; the sandbox service asks it for `ImageRoot`s to run in.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Literal

import msgspec

from appliance.config import SandboxConfig
from appliance.errors import ApplianceError
from appliance.sandbox.images.archive import import_archive
from appliance.sandbox.images.errors import ImageInUse
from appliance.sandbox.images.reference import parse_ref
from appliance.sandbox.images.registry import RegistryClient, load_credentials
from appliance.sandbox.images.runtime import ImageRoot, parse_env
from appliance.sandbox.images.store import ImageRecord, ImageStore
from appliance.telemetry.recorder import Telemetry

log = logging.getLogger("appliance.images")


class ImageOut(msgspec.Struct, kw_only=True):
    refs: list[str]
    digest: str
    size: int
    layers: int
    architecture: str
    os: str
    created_at: float
    env: list[str]
    workdir: str
    entrypoint: list[str]
    cmd: list[str]
    user: str


class PullRequest(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    ref: str


class PullStatus(msgspec.Struct, kw_only=True):
    ref: str
    status: Literal["pulling", "done", "failed"]
    started_at: float
    bytes_done: int = 0
    bytes_total: int = 0
    digest: str | None = None
    error: str | None = None


class ImportResult(msgspec.Struct, kw_only=True):
    images: list[ImageOut]


class PruneResult(msgspec.Struct, kw_only=True):
    freed_bytes: int


def image_out(refs: list[str], rec: ImageRecord) -> ImageOut:
    c = rec.config
    return ImageOut(
        refs=refs,
        digest=rec.digest,
        size=rec.size,
        layers=len(rec.layers),
        architecture=rec.architecture,
        os=rec.os,
        created_at=rec.created_at,
        env=list(c.env or []),
        workdir=c.WorkingDir,
        entrypoint=list(c.Entrypoint or []),
        cmd=list(c.Cmd or []),
        user=c.User,
    )


class ImageService:
    def __init__(
        self, config: SandboxConfig, root: Path, telemetry: Telemetry | None = None
    ) -> None:
        self.config = config
        self.store = ImageStore(root, max_layer_bytes=config.max_layer_mb * 1024 * 1024)
        self.telemetry = telemetry
        self.pulls: dict[str, PullStatus] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._clients: dict[str, RegistryClient] = {}
        self.max_import_bytes = config.max_import_mb * 1024 * 1024
        self.in_use: Callable[[], Collection[str]] = tuple
        """Digests of the images sandboxes run in now (the sandbox service sets it)."""

    def _publish(self, status: PullStatus) -> None:
        if self.telemetry is not None:
            self.telemetry.events.publish("image.pull", **msgspec.structs.asdict(status))

    # --- reading ---------------------------------------------------------------------------------

    async def list_images(self) -> list[ImageOut]:
        found = await asyncio.to_thread(lambda: list(self.store.images()))
        return [image_out(refs, rec) for refs, rec in found]

    async def inspect(self, ref: str) -> ImageOut:
        rec = await asyncio.to_thread(self.store.resolve, ref)
        refs = [r for r, d in await asyncio.to_thread(self._refs) if d == rec.digest]
        return image_out(refs, rec)

    def _refs(self) -> list[tuple[str, str]]:
        return [(r, rec.digest) for refs, rec in self.store.images() for r in refs]

    async def root(self, ref: str) -> ImageRoot:
        """The image `ref` ready to run in (ImageNotFound when it is not in the store)."""
        rec = await asyncio.to_thread(self.store.resolve, ref)
        c = rec.config
        return ImageRoot(
            name=ref,
            digest=rec.digest,
            path=self.store.root_path(rec.digest),
            env=parse_env(c.env or []),
            workdir=c.WorkingDir,
            entrypoint=tuple(c.Entrypoint or ()),
            cmd=tuple(c.Cmd or ()),
        )

    # --- changing ----------------------------------------------------------------------------------

    async def import_file(
        self, path: Path, name: str | None = None, *, label: str | None = None
    ) -> ImportResult:
        if name:
            parse_ref(name)  # refused before any work
        records = await asyncio.to_thread(self._import, path, name, label)
        return ImportResult(images=records)

    def _import(self, path: Path, name: str | None, label: str | None) -> list[ImageOut]:
        with self.store.lock:
            records = import_archive(self.store, path, name, label=label)
            refs = self._refs()
        return [image_out([r for r, d in refs if d == rec.digest], rec) for rec in records]

    async def remove(self, ref: str) -> list[str]:
        """Drop `ref`; refused (409) when it is the image's last name and sandboxes run in it."""

        def remove() -> list[str]:
            with self.store.lock:
                rec = self.store.resolve(ref)
                names = {r for r, d in self._refs() if d == rec.digest}
                last = ref.startswith("sha256:") or names <= {ref, str(parse_ref(ref))}
                users = sum(1 for d in self.in_use() if d == rec.digest)
                if last and users:
                    raise ImageInUse(
                        f"{users} sandbox(es) run in {ref}; delete them first (DELETE "
                        "/api/sandboxes/{id}), or wait for their runs to end"
                    )
                return self.store.remove(ref)

        return await asyncio.to_thread(remove)

    async def prune(self) -> PruneResult:
        def prune() -> int:
            return self.store.collect() + self.store.prune_partial()

        return PruneResult(freed_bytes=await asyncio.to_thread(prune))

    # --- pulls -------------------------------------------------------------------------------------

    def start_pull(self, req: PullRequest) -> PullStatus:
        """Start pulling `req.ref` in the background (or return the pull already running)."""
        ref = str(parse_ref(req.ref))
        running = self.pulls.get(ref)
        if running is not None and running.status == "pulling":
            return running
        status = PullStatus(ref=ref, status="pulling", started_at=time.time())
        self.pulls[ref] = status
        self._tasks[ref] = asyncio.create_task(self._pull(status), name=f"pull {ref}")
        self._publish(status)
        return status

    async def pull(self, ref: str) -> PullStatus:
        """Pull and wait for the end (tests, the CLI's library use)."""
        status = self.start_pull(PullRequest(ref=ref))
        task = self._tasks.get(status.ref)
        if task is not None:
            await asyncio.shield(task)
        return self.pulls[status.ref]

    async def _pull(self, status: PullStatus) -> None:
        last = 0.0

        def progress(done: int, total: int) -> None:
            nonlocal last
            status.bytes_done, status.bytes_total = done, total
            now = time.monotonic()
            if now - last > 0.25:
                last = now
                self._publish(status)

        client = RegistryClient(
            insecure=self.config.insecure_registries,
            credentials=load_credentials(self.config.registry_auth_file),
            max_blob_bytes=self.store.max_layer_bytes,
        )
        self._clients[status.ref] = client
        try:
            digest = await asyncio.to_thread(client.pull, self.store, status.ref, progress)
            status.digest, status.status = digest, "done"
        except ApplianceError as exc:
            status.status, status.error = "failed", exc.message
        except Exception as exc:  # a bug or an OS error: reported, never lost
            log.exception("pull of %s failed", status.ref)
            status.status, status.error = "failed", f"{type(exc).__name__}: {exc}"
        finally:
            client.close()
            self._tasks.pop(status.ref, None)
            self._clients.pop(status.ref, None)
            self._forget_old_pulls()
            self._publish(status)

    def _forget_old_pulls(self, keep: int = 100) -> None:
        ended = [r for r, p in self.pulls.items() if p.status != "pulling"]
        for ref in ended[: max(0, len(ended) - keep)]:
            del self.pulls[ref]

    def pull_statuses(self) -> list[PullStatus]:
        return list(self.pulls.values())

    async def stop(self) -> None:
        for client in list(self._clients.values()):
            client.cancelled = True  # its thread stops at the next chunk
        for task in list(self._tasks.values()):
            task.cancel()
        for task in list(self._tasks.values()):
            with contextlib.suppress(BaseException):
                await task
