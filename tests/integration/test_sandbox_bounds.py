"""What one client can make the daemon spend through sandboxes, bounded: the files a run returns,
and the memory sandboxes may reserve (with a share kept for agents).

The fetch_files test runs against a real `appliance serve` so the daemon's own peak memory can be
read from /proc; the others use the sandbox-only server of conftest.py.
"""

from __future__ import annotations

import base64
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from tests.conftest import require
from tests.integration.conftest import SANDBOX_REPO, SandboxServer, sandbox_server_with
from tests.integration.daemon import running_daemon

BIG = 60 * 1000 * 1000

ALIASES = """
import os
with open("big", "wb") as f:
    f.write(b"x" * {size})
os.makedirs("d", exist_ok=True)
for i in range(5):
    os.link("big", f"hard{{i}}")
    os.symlink("big", f"soft{{i}}")
os.symlink("/workspace/big", "d/abs")
print("ready")
"""


def _peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def test_aliases_of_one_file_are_returned_once_and_the_daemon_stays_small(tmp_path: Path) -> None:
    """The issue's attack: 16 names of one 60 MB file took the daemon from 130 MB to 3.96 GB."""
    names = ["big", "./big", ".//big", "big/", *(f"hard{i}" for i in range(5))]
    names += [*(f"soft{i}" for i in range(5)), "d/abs", "./d//abs"]
    assert len(names) == 16
    with running_daemon(tmp_path) as daemon, daemon.http(timeout=300) as c:
        warm = c.post("/api/run", json={"language": "python", "code": "print(1)"})
        if warm.status_code == 503:
            require(False, warm.json()["error"]["message"])
        before = _peak_rss_mb(daemon.proc.pid)
        r = c.post(
            "/api/run",
            json={
                "language": "python",
                "code": ALIASES.format(size=BIG),
                "fetch_files": names,
                "timeout_s": 60,
            },
        )
        after = _peak_rss_mb(daemon.proc.pid)
    assert r.status_code == 200, r.text[:500]
    result = r.json()
    assert result["status"] == "ok", result
    assert list(result["files"]) == ["big"]  # every other name is the same file
    assert len(base64.b64decode(result["files"]["big"])) == BIG
    assert len(r.content) < 1.5 * BIG
    # one 60 MB file, its base64 and the JSON around it; the aliases used to cost 16 times that
    assert after - before < 700, (before, after)


def test_fetch_files_is_capped_in_count_and_in_total_size(sandbox_server: SandboxServer) -> None:
    with sandbox_server.client() as c:
        many = [f"f{i}.txt" for i in range(33)]
        r = c.post("/api/run", json={"language": "python", "code": "1", "fetch_files": many})
        assert r.status_code == 400, r.text
        assert "at most 32" in r.json()["error"]["message"]
        assert "sandbox.max_fetch_files" in r.json()["error"]["message"]

        code = "for n in ('a', 'b'):\n    open(n, 'wb').write(b'z' * 40 * 1024 * 1024)\n"
        r = c.post(
            "/api/run",
            json={"language": "python", "code": code, "fetch_files": ["a", "b"], "timeout_s": 30},
        )
        assert r.status_code == 413, r.text[:300]
        message = r.json()["error"]["message"]
        assert "64 MB" in message and "sandbox.max_fetch_mb" in message

        # one 40 MB file under two names is one file, well within the limit
        r = c.post(
            "/api/run",
            json={
                "language": "python",
                "code": code + "import os\nos.link('a', 'a2')\n",
                "fetch_files": ["a", "a2", "./a"],
                "timeout_s": 30,
            },
        )
        assert r.status_code == 200, r.text[:300]
        assert list(r.json()["files"]) == ["a"]


def _python(c: httpx.Client, **fields: object) -> httpx.Response:
    return c.post("/api/sandboxes", json={"language": "python", **fields})


def test_sandboxes_past_the_memory_budget_get_503_with_retry_after(tmp_path: Path) -> None:
    # 3000 MB, a quarter kept for agents: API clients may hold 2250 MB, and each python sandbox
    # at memory_mb 512 counts 512 + 2 x 64 (/tmp, /dev/shm) + 256 (workspace) = 896 MB
    with (
        sandbox_server_with(tmp_path, pool={}, memory_budget_mb=3000) as server,
        server.client() as c,
    ):
        held = [_python(c, memory_mb=512) for _ in range(2)]
        assert [r.status_code for r in held] == [201, 201], [r.text for r in held]
        refused = _python(c, memory_mb=512)
        assert refused.status_code == 503 and int(refused.headers["Retry-After"]) > 0
        error = refused.json()["error"]
        assert error["code"] == "sandbox_memory_full"
        assert "sandbox.memory_budget_mb" in error["message"] and "896 MB" in error["message"]
        run = c.post("/api/run", json={"language": "python", "code": "1", "memory_mb": 512})
        assert run.status_code == 503 and "Retry-After" in run.headers
        small = c.post("/api/run", json={"language": "python", "code": "print(1)", "memory_mb": 16})
        assert small.status_code == 200  # 16 + 128 + 256 = 400 MB still fits beside them
        never = _python(c, memory_mb=2048)
        assert never.status_code == 507, never.text  # could not fit even alone: no Retry-After
        c.delete(f"/api/sandboxes/{held[0].json()['id']}")
        assert _python(c, memory_mb=512).status_code == 201  # deleting one gave its memory back


class _Sessions:
    """Just what RunCode asks of the store: a session row with its sandbox id."""

    def __init__(self) -> None:
        self.sandbox_id: str | None = None

    def get(self, session_id: str) -> Any:
        return SimpleNamespace(id=session_id, sandbox_id=self.sandbox_id)

    def update(self, session_id: str, *, sandbox_id: str) -> None:
        self.sandbox_id = sandbox_id


class _Store:
    def __init__(self) -> None:
        self.sessions = _Sessions()

    async def run(self, fn: Any, *args: Any, **kw: Any) -> Any:
        return fn(*args, **kw)


@pytest.mark.parametrize(
    ("budget_mb", "max_sandboxes", "full"),
    [(2560, 32, "memory"), (10_000, 4, "count")],
)
async def test_an_agents_run_code_works_while_clients_hold_all_they_may(
    tmp_path: Path, budget_mb: int, max_sandboxes: int, full: str
) -> None:
    """Once any client held 32 sandboxes, the coder agent's run_code failed. A default python
    sandbox counts 256 + 128 + 256 = 640 MB: three of them are the clients' whole share of
    2560 MB (a quarter is the agents'), or the clients' 3 of 4 places."""
    from appliance.config import SandboxConfig
    from appliance.sandbox.errors import SandboxLimitReached, SandboxMemoryFull
    from appliance.sandbox.profiles import ProfileCatalog
    from appliance.sandbox.service import CreateSandboxRequest, SandboxService
    from appliance.sessions.tools import RunCode, ToolContext

    config = SandboxConfig(pool={}, memory_budget_mb=budget_mb, max_sandboxes=max_sandboxes)
    catalog = ProfileCatalog.load([SANDBOX_REPO / "profiles" / "sandboxes"])
    service = SandboxService(config, catalog=catalog, root=tmp_path / "sandboxes")
    await service.start()
    try:
        require(not service.unavailable, f"this host cannot run sandboxes: {service.unavailable}")
        for _ in range(3):
            await service.create(CreateSandboxRequest(language="python"))
        refused = SandboxMemoryFull if full == "memory" else SandboxLimitReached
        with pytest.raises(refused, match="kept for agents"):
            await service.create(CreateSandboxRequest(language="python"))
        tool = RunCode(service, _Store())  # type: ignore[arg-type]
        outcome = await tool.run(ToolContext("session-1", "python"), {"code": "print(6 * 7)"})
        assert outcome.status == "ok" and outcome.content == "42", outcome
        assert service.admission.stats()["agents_mb"] > 0
    finally:
        await service.stop()
