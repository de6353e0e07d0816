"""Integration fixtures for sandboxes: a real SandboxService behind a real HTTP server.

`sandbox_server` runs the sandbox routes (appliance.api.sandboxes.create_sandbox_app) under
uvicorn on a free 127.0.0.1 port in a background thread, with real bwrap underneath. One server
serves the whole session; tests that need other settings start their own with
`sandbox_server_with(...)`. Sandbox tests skip when this host cannot run sandboxes at all.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import require

SANDBOX_REPO = Path(__file__).resolve().parents[2]


def sandbox_free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class SandboxServer:
    url: str
    port: int
    root: Path
    service: Any

    def client(self, timeout: float = 120.0) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=timeout)

    def run(self, language: str, code: str, **fields: Any) -> dict[str, Any]:
        with self.client() as c:
            r = c.post("/api/run", json={"language": language, "code": code, **fields})
            assert r.status_code == 200, r.text
            result: dict[str, Any] = r.json()
            return result


@contextlib.contextmanager
def sandbox_server_with(root: Path, **settings: Any) -> Iterator[SandboxServer]:
    import uvicorn

    from appliance.api.sandboxes import create_sandbox_app
    from appliance.config import SandboxConfig
    from appliance.sandbox.profiles import ProfileCatalog
    from appliance.sandbox.service import SandboxService

    config = SandboxConfig(**settings)
    catalog = ProfileCatalog.load(
        [SANDBOX_REPO / "profiles" / "sandboxes", *map(Path, config.profile_dirs)]
    )
    service = SandboxService(config, catalog=catalog, root=root / "sandboxes")
    port = sandbox_free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            create_sandbox_app(service), host="127.0.0.1", port=port, log_level="warning"
        )
    )
    thread = threading.Thread(target=server.run, name="sandbox-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the sandbox test server did not start")
        time.sleep(0.02)
    try:
        require(not service.unavailable, f"this host cannot run sandboxes: {service.unavailable}")
        yield SandboxServer(f"http://127.0.0.1:{port}", port, root, service)
    finally:
        server.should_exit = True
        thread.join(timeout=30)


@pytest.fixture(scope="session")
def sandbox_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SandboxServer]:
    """The shared server: warm pool for python (2) and javascript (1), no network."""
    root = tmp_path_factory.mktemp("sandbox-server")
    with sandbox_server_with(root, pool={"python": 2, "javascript": 1}, max_concurrent=4) as server:
        yield server


def sandbox_wait_pool(server: SandboxServer, language: str, timeout: float = 20.0) -> None:
    """Wait until the warm pool of `language` is full again."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pool = server.service.pool.stats() if server.service.pool else {}
        entry = pool.get(language)
        if entry and entry["ready"] >= entry["target"]:
            return
        time.sleep(0.05)
    raise AssertionError(f"the {language} pool did not refill within {timeout}s")
