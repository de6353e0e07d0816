"""A small synchronous HTTP client for CLI subcommands that talk to a running daemon."""

from __future__ import annotations

from typing import Any

import httpx

from appliance.errors import ApplianceError


class DaemonClient:
    def __init__(self, url: str, token: str | None = None, timeout: float = 600.0) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.url = url.rstrip("/")
        self.http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    def request(self, method: str, path: str, **kw: Any) -> Any:
        try:
            resp = self.http.request(method, path, **kw)
        except httpx.ConnectError as exc:
            raise ApplianceError(
                f"cannot reach the appliance at {self.url} ({exc}). Start it with `appliance serve`"
                " or pass --url."
            ) from exc
        if resp.status_code >= 400:
            try:
                msg = resp.json()["error"]["message"]
            except Exception:
                msg = resp.text
            raise ApplianceError(f"{resp.status_code}: {msg}")
        return resp.json() if resp.content else None

    def get(self, path: str, **kw: Any) -> Any:
        return self.request("GET", path, **kw)

    def post(self, path: str, **kw: Any) -> Any:
        return self.request("POST", path, **kw)
