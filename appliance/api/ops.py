"""Operations routes: health and status."""

from __future__ import annotations

from typing import Any

from litestar import Controller, get

from appliance import __version__
from appliance.services.container import Appliance


class OpsController(Controller):
    tags = ["operations"]

    @get("/api/health")
    async def health(self) -> dict[str, Any]:
        return {"status": "ok", "version": __version__}

    @get("/api/status")
    async def status(self, appliance: Appliance) -> dict[str, Any]:
        return await appliance.status()
