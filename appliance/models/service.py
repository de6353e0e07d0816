"""Model management: listing, loading, unloading, pinning and adding models."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import msgspec

from appliance.errors import InvalidRequest
from appliance.models.catalog import ModelCatalog
from appliance.models.registration import RegistrationPolicy
from appliance.models.scheduler import ModelScheduler
from appliance.sampling import KEEP_ALIVE_MAX


class AddModelRequest(msgspec.Struct, kw_only=True, omit_defaults=True):
    """`POST /api/models`: register a GGUF (or BERT folder) already on this box under an id."""

    path: str
    id: str | None = None
    kind: str = "chat"
    replace: bool = False


def _size(path: Path | None) -> int | None:
    try:
        return path.stat().st_size if path is not None else None
    except OSError:
        return None


def _origin(source: str) -> str:
    """A hand-written profile's origin: its source's scheme (`local` for a path)."""
    scheme, sep, _ = source.partition(":")
    return scheme if sep and scheme in ("hf", "pypi", "url", "http", "https") else "local"


class ModelService:
    def __init__(
        self, catalog: ModelCatalog, scheduler: ModelScheduler, registration: RegistrationPolicy
    ) -> None:
        self.catalog = catalog
        self.scheduler = scheduler
        self.registration = registration
        """Where API clients may register model files from (appliance.models.registration)."""

    def openai_list(self) -> dict[str, Any]:
        return {
            "object": "list",
            "data": [
                {
                    "id": m.id,
                    "object": "model",
                    "created": 0,
                    "owned_by": "appliance",
                    "kind": m.kind,
                    "state": m.state,
                }
                for m in self.scheduler.snapshot()
            ],
        }

    def list(self) -> list[dict[str, Any]]:
        out = []
        for status in self.scheduler.snapshot():
            d = status.to_dict()
            path = self.catalog.local_path(status.id)
            prof = self.catalog.get(status.id)
            d["fetched"] = path is not None
            d["size_bytes"] = _size(path)
            d["origin"] = prof.origin or _origin(prof.source)
            d["sha256"] = prof.sha256
            out.append(d)
        return out

    def get(self, model_id: str) -> dict[str, Any]:
        self.catalog.get(model_id)
        return next(m for m in self.list() if m["id"] == model_id)

    async def load(self, model_id: str, keep_alive: float | None = None) -> dict[str, Any]:
        if keep_alive is not None and (
            not math.isfinite(keep_alive)
            or keep_alive > KEEP_ALIVE_MAX
            or (keep_alive < 0 and keep_alive != -1)
        ):
            # nan would make the idle reaper spin: no deadline compares as passed
            raise InvalidRequest(
                f"keep_alive must be -1 (never unload), 0 or positive seconds up to {KEEP_ALIVE_MAX:g}",
                param="keep_alive",
            )
        await self.scheduler.load(model_id, keep_alive=keep_alive)
        return self.get(model_id)

    async def unload(self, model_id: str) -> dict[str, Any]:
        await self.scheduler.unload(model_id)
        return self.get(model_id)

    async def pin(self, model_id: str, pinned: bool) -> dict[str, Any]:
        await self.scheduler.pin(model_id, pinned)
        return self.get(model_id)

    async def add(
        self, path: str, model_id: str | None, kind: str, replace: bool = False
    ) -> dict[str, Any]:
        """Register a model file (the rules: appliance.models.registration). A replaced model that
        is loaded is unloaded, so its next request loads the new file."""
        if kind not in ("chat", "embedding"):
            raise InvalidRequest("kind must be 'chat' or 'embedding'", param="kind")
        prof = self.catalog.add_path(
            Path(path), model_id=model_id, kind=kind, replace=replace, policy=self.registration
        )
        if replace:
            await self.scheduler.unload(prof.id)
        return self.get(prof.id)
