"""The model hub: pull a GGUF from a URL or Hugging Face, import what other tools hold, remove.

A pull (`POST /api/models/pull`) is checked and resolved before it is accepted: the source
parses, the id is free, the remote files are listed with their sizes and digests, and they fit
the free space of the model store (507 with the sizes when they do not). It then runs in a
thread of its own, never under the scheduler's load lock, so loading another model does not wait
for it. Bytes go to `<state>/models/<id>.gguf.partial` (a name no catalog treats as a model),
resumed with HTTP Range after a dropped connection; the sha256 is checked (the one given, or the
file's LFS sha256 on Hugging Face), the file is renamed into place atomically, and the profile
is written to the config directory with kind and context from the GGUF. The first request can
come the moment the pull says `done`.

Progress is published as `model.pull` events (bytes, total, rate in bytes/s, state) and kept in
`PullStatus` records for `GET /api/models/pulls`; `cancel` stops a pull and removes its partial
file. A pull that fails on the network keeps the partial file, so pulling again resumes.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import msgspec

from appliance.errors import (
    ApplianceError,
    Conflict,
    InsufficientStorage,
    InvalidRequest,
    NotFound,
)
from appliance.models.catalog import ModelCatalog
from appliance.models.fetch.download import (
    DownloadInterrupted,
    PullCancelled,
    download,
    remote_size,
)
from appliance.models.fetch.hf_files import SPLIT as SPLIT_NAME
from appliance.models.fetch.hf_files import RemoteFile, hf_headers, resolve_hf
from appliance.models.fetch.ollama_registry import resolve_ollama
from appliance.models.fetch.progress import human_bytes
from appliance.models.fetch.sources import PullSource, check_sha256, parse_pull_source
from appliance.models.fetch.wheels import ModelFetchError
from appliance.models.gguf_info import MAX_PROFILE_CONTEXT, GgufDescription, describe_gguf
from appliance.models.imports import ImportRequest, import_models
from appliance.models.profile import ID_PATTERN, ModelProfile
from appliance.models.registration import RegistrationPolicy
from appliance.models.scheduler import ModelScheduler

log = logging.getLogger("appliance.models")

KEEP_FINISHED = 50
EVENT_EVERY_S = 0.25

Publish = Callable[..., Any]


class PullRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """`POST /api/models/pull`: fetch a GGUF into the model store and register it."""

    source: str
    """`url:https://HOST/FILE.gguf`, `hf:OWNER/REPO:QUANT` or `hf:OWNER/REPO/FILE.gguf`."""
    id: str | None = None
    """Model id (default: from the file name)."""
    sha256: str | None = None
    """The file's sha256 (64 hex digits); the pull fails, leaving nothing, when it differs."""


class PullStatus(msgspec.Struct, kw_only=True):
    id: str
    source: str
    model: str
    state: str = "downloading"
    """downloading, verifying, done, failed or cancelled."""
    bytes: int = 0
    total: int | None = None
    rate: float = 0.0
    """Bytes per second since the pull started."""
    error: str | None = None
    started: float = 0.0
    finished: float | None = None


class _Pull:
    def __init__(self, status: PullStatus, src: PullSource, files: list[RemoteFile]) -> None:
        self.status = status
        self.src = src
        self.files = files
        self.cancel = threading.Event()
        self.resumable = False
        """Cancelled by the daemon stopping, not by a user: keep the partial file."""
        self.task: asyncio.Future[None] | None = None


def _check_id(model_id: str | None) -> None:
    if model_id is not None and not ID_PATTERN.match(model_id):
        raise InvalidRequest(
            f"id {model_id!r} is not valid: use 1-64 lower case letters, digits, '.', '_', '-',"
            " starting with a letter or digit",
            param="id",
        )


def _default_id(name: str) -> str:
    from appliance.models.fetch.importers import model_id

    stem = name.rsplit("/", 1)[-1].removesuffix(".gguf")
    return model_id(stem.split("-00001-of-")[0])


class ModelHub:
    """Pulls, imports and removals of models; one per daemon."""

    def __init__(
        self,
        catalog: ModelCatalog,
        scheduler: ModelScheduler,
        *,
        publish: Publish,
        policy: RegistrationPolicy,
        http: Callable[[], httpx.Client] | None = None,
    ) -> None:
        self.catalog = catalog
        self.scheduler = scheduler
        self.policy = policy
        self.store = catalog.fetcher.store_dir
        self.publish = publish
        self._http = http or (
            lambda: httpx.Client(
                timeout=httpx.Timeout(30.0), follow_redirects=True, headers=hf_headers()
            )
        )
        self._pulls: dict[str, _Pull] = {}

    # --- pulls -----------------------------------------------------------------------------

    async def pull(self, req: PullRequest) -> PullStatus:
        """Check, resolve and start a pull; returns at once with its status (202)."""
        src = parse_pull_source(req.source)
        sha = check_sha256(req.sha256)
        _check_id(req.id)
        files = await asyncio.to_thread(self._resolve, src)
        if sha is not None:
            if len(files) != 1:
                raise InvalidRequest(
                    "sha256 names one file; this source has several", param="sha256"
                )
            files = [
                RemoteFile(files[0].name, files[0].url, files[0].size, sha, files[0].context_size)
            ]
        mid = req.id or (
            _default_id(
                f"{src.location.removeprefix('library/')}-{src.tag}".removesuffix("-latest")
            )
            if src.scheme == "ollama"
            else _default_id(files[0].name)
        )
        _check_id(mid)
        if mid in self.catalog.ids():
            raise Conflict(
                f"model {mid!r} already exists; remove it first (`appliance models rm {mid}`)"
                " or pull under another --id",
                param="id",
                code="model_exists",
            )
        if any(p.status.model == mid and p.status.finished is None for p in self._pulls.values()):
            raise Conflict(
                f"model {mid!r} is being pulled already", param="id", code="pull_running"
            )
        self._check_space(mid, files)
        status = PullStatus(
            id=f"pull_{secrets.token_hex(6)}",
            source=src.text,
            model=mid,
            total=sum(f.size for f in files if f.size) or None,
            started=time.time(),
        )
        pull = _Pull(status, src, files)
        self._pulls[status.id] = pull
        self._trim()
        self._event(pull)
        pull.task = asyncio.ensure_future(self._drive(pull))
        return status

    def pulls(self) -> list[PullStatus]:
        return [p.status for p in self._pulls.values()]

    def get_pull(self, pull_id: str) -> PullStatus:
        return self._find(pull_id).status

    async def cancel(self, pull_id: str) -> PullStatus:
        pull = self._find(pull_id)
        pull.cancel.set()
        if pull.task is not None:
            await asyncio.wait([pull.task], timeout=10)
        return pull.status

    async def wait(self, pull_id: str) -> PullStatus:
        """Until the pull ends (tests and the Ollama API's blocking /api/pull)."""
        pull = self._find(pull_id)
        if pull.task is not None:
            await asyncio.wait([pull.task])
        return pull.status

    async def stop(self) -> None:
        """Cancel running pulls (the daemon is stopping); their partial files stay, so pulling again
        resumes."""
        running = [p for p in self._pulls.values() if p.status.finished is None]
        for p in running:
            p.resumable = True
            p.cancel.set()
        tasks = [p.task for p in running if p.task is not None]
        if tasks:
            await asyncio.wait(tasks, timeout=10)

    def _find(self, pull_id: str) -> _Pull:
        pull = self._pulls.get(pull_id)
        if pull is None:
            raise NotFound(f"no pull {pull_id!r}; GET /api/models/pulls lists them", param="id")
        return pull

    def _trim(self) -> None:
        done = [k for k, p in self._pulls.items() if p.status.finished is not None]
        for k in done[: max(0, len(done) - KEEP_FINISHED)]:
            del self._pulls[k]

    def _resolve(self, src: PullSource) -> list[RemoteFile]:
        if src.scheme == "hf":
            return resolve_hf(src)
        with self._http() as http:
            if src.scheme == "ollama":
                return resolve_ollama(src, http)
            size = remote_size(src.location, http)
        name = httpx.URL(src.location).path.rsplit("/", 1)[-1] or "model.gguf"
        return [RemoteFile(name=name, url=src.location, size=size, sha256=None)]

    def _targets(self, mid: str, files: list[RemoteFile]) -> list[Path]:
        if len(files) == 1:
            return [self.store / f"{mid}.gguf"]
        n = len(files)
        return [self.store / f"{mid}-{i:05d}-of-{n:05d}.gguf" for i in range(1, n + 1)]

    def _check_space(self, mid: str, files: list[RemoteFile]) -> None:
        self.store.mkdir(parents=True, exist_ok=True, mode=0o700)
        need = 0
        for f, target in zip(files, self._targets(mid, files), strict=True):
            partial = target.with_name(target.name + ".partial")
            have = partial.stat().st_size if partial.exists() else 0
            need += max(0, (f.size or 0) - have)
        free = shutil.disk_usage(self.store).free
        if need > free:
            raise InsufficientStorage(
                f"pulling {mid!r} needs {human_bytes(need)} ({need} bytes) but {self.store} has"
                f" {human_bytes(free)} ({free} bytes) free; free space there or remove models"
                " with `appliance models rm ID --files`",
                code="insufficient_storage",
            )

    def _event(self, pull: _Pull) -> None:
        s = pull.status
        self.publish(
            "model.pull",
            pull=s.id,
            model=s.model,
            source=s.source,
            state=s.state,
            bytes=s.bytes,
            total=s.total,
            rate=s.rate,
            error=s.error,
        )

    # --- the pull's thread -----------------------------------------------------------------

    async def _drive(self, pull: _Pull) -> None:
        """The pull from start to end: the bytes in a thread, the profile on the event loop
        (where every other change to the catalog happens)."""
        s = pull.status
        targets = self._targets(s.model, pull.files)
        partials = [t.with_name(t.name + ".partial") for t in targets]
        keep_partials = installed = False
        try:
            digests = await asyncio.to_thread(self._fetch_and_verify, pull, partials)
            for part, target in zip(partials, targets, strict=True):
                os.replace(part, target)
            installed = True
            info = await asyncio.to_thread(describe_gguf, targets[0])
            self._register(pull, targets, digests, info)
            s.state = "done"
        except PullCancelled:
            s.state, s.error = "cancelled", "cancelled"
            keep_partials = pull.resumable
        except DownloadInterrupted as exc:
            s.state, s.error = "failed", exc.message
            keep_partials = True  # a network failure: pulling again resumes
        except ApplianceError as exc:
            s.state, s.error = "failed", exc.message
        except Exception as exc:
            log.exception("pull %s failed", s.id)
            s.state, s.error = "failed", f"{type(exc).__name__}: {exc}"
        finally:
            if not keep_partials:
                for part in partials:
                    part.unlink(missing_ok=True)
            if installed and s.state != "done":
                for target in targets:
                    target.unlink(missing_ok=True)
            s.finished = time.time()
            self._event(pull)

    def _fetch_and_verify(self, pull: _Pull, partials: list[Path]) -> list[str]:
        """Download every file into its partial file and check digests and magic (blocking)."""
        s = pull.status
        digests = self._download_all(pull, partials)
        s.state = "verifying"
        self._event(pull)
        for f, digest in zip(pull.files, digests, strict=True):
            if f.sha256 and digest != f.sha256.lower():
                raise ModelFetchError(
                    f"{f.name} has sha256 {digest}, not the expected {f.sha256}; the file"
                    " was removed. Check the digest, or the source"
                )
        for part in partials:
            with part.open("rb") as fh:
                if fh.read(4) != b"GGUF":
                    raise ModelFetchError(f"{s.source} is not a GGUF file; pull a .gguf file")
        return digests

    def _download_all(self, pull: _Pull, partials: list[Path]) -> list[str]:
        s = pull.status
        t0 = time.monotonic()
        last = [0.0]
        before = 0
        start_bytes = sum(p.stat().st_size for p in partials if p.exists())
        digests = []

        def report(done: int, _total: int | None) -> None:
            s.bytes = before + done
            now = time.monotonic()
            s.rate = (s.bytes - start_bytes) / max(now - t0, 1e-6)
            if now - last[0] >= EVENT_EVERY_S:
                last[0] = now
                self._event(pull)

        with self._http() as http:
            for f, part in zip(pull.files, partials, strict=True):
                digests.append(
                    download(f.url, part, http=http, report=report, cancelled=pull.cancel.is_set)
                )
                before += part.stat().st_size
        return digests

    def _register(
        self, pull: _Pull, targets: list[Path], digests: list[str], info: GgufDescription
    ) -> None:
        s = pull.status
        if s.model in self.catalog.ids():
            raise Conflict(
                f"model {s.model!r} was added while it was being pulled; the pulled file was"
                " removed. Pull under another id",
                param="id",
                code="model_exists",
            )
        ctx = pull.files[0].context_size or min(info.context_length or 2048, MAX_PROFILE_CONTEXT)
        if len(targets) == 1:
            # the concrete source, so a removed file can be fetched again from the profile
            one = pull.files[0]
            hf = pull.src.scheme == "hf"
            source = f"hf:{pull.src.location}/{one.name}" if hf else f"url:{one.url}"
            self.catalog.fetcher.record(s.model, source)
        else:
            source = str(targets[0])
        self.catalog.add(
            ModelProfile(
                id=s.model,
                source=source,
                kind=info.kind,  # type: ignore[arg-type]
                context_size=max(ctx, 16),
                description=f"pulled from {s.source}",
                origin=pull.src.scheme,
                sha256=digests[0],
            )
        )

    # --- removal ---------------------------------------------------------------------------

    async def remove(self, model_id: str, *, files: bool = False) -> dict[str, Any]:
        """Unload the model, remove its profile and, with `files`, its file in the model store
        when no other profile uses it. Files outside the store (an import) are never deleted."""
        self.catalog.get(model_id)
        state = await self.scheduler.unload(model_id)
        if state not in ("unloaded", "failed"):
            raise Conflict(
                f"model {model_id!r} is {state} with requests running; retry when they end",
                param="id",
                code="model_busy",
            )
        path = None
        try:
            path = self.catalog.local_path(model_id)
        except ApplianceError:
            path = None
        self.catalog.remove(model_id)
        self.scheduler.forget(model_id)
        out: dict[str, Any] = {"id": model_id, "removed": True, "files_removed": []}
        if files and path is not None:
            out.update(self._remove_file(model_id, path))
        return out

    def _remove_file(self, model_id: str, path: Path) -> dict[str, Any]:
        real = Path(os.path.realpath(path))
        store = Path(os.path.realpath(self.store))
        if store not in real.parents:
            return {"files_kept": [str(path)], "note": "the file is outside the model store"}
        users = []
        for other in self.catalog.ids():
            try:
                p = self.catalog.local_path(other)
            except ApplianceError:
                continue
            if p is not None and Path(os.path.realpath(p)) == real:
                users.append(other)
        if users:
            return {"files_kept": [str(path)], "note": f"still used by {', '.join(users)}"}
        split = SPLIT_NAME.match(real.name)
        doomed = (
            sorted(real.parent.glob(f"{split['stem']}-*-of-{split['count']}.gguf"))
            if split
            else [real]
        )
        for f in doomed:
            f.unlink(missing_ok=True)
        self.catalog.fetcher.forget(model_id)
        return {"files_removed": [str(f) for f in doomed]}

    # --- import ----------------------------------------------------------------------------

    async def import_models(self, req: ImportRequest) -> dict[str, Any]:
        """Register what Ollama, LM Studio or the HF cache hold (appliance.models.imports)."""
        return await import_models(self.catalog, self.policy, req)
