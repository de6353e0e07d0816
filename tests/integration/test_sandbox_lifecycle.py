"""A sandbox whose start is abandoned half-way leaves no process behind (real bwrap).

bwrap's sandbox process waits for bwrap's go-ahead before it arms its own death signal, so a start
cut short at the wrong moment (the pool stopping at shutdown, a one-shot run whose client went
away) used to leave it blocked forever: pid 1 of its own pid namespace, adopted by init.
"""

from __future__ import annotations

import asyncio
import random
import subprocess
from pathlib import Path

import pytest

from appliance.sandbox.bwrap import locate_bwrap
from appliance.sandbox.engine import EngineConfig, SandboxEngine, mounts_under
from appliance.sandbox.identity import SandboxIdentity
from appliance.sandbox.preflight import run_preflight
from appliance.sandbox.profiles import ProfileCatalog
from tests.conftest import require
from tests.integration.procs import kill_all, naming, survivors, workspaces

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def engine(tmp_path: Path) -> SandboxEngine:
    report = run_preflight()
    require(report.ok, f"this host cannot run sandboxes: {report.summary()}")
    catalog = ProfileCatalog.load([REPO / "profiles" / "sandboxes"])
    identity = SandboxIdentity.for_host(sandbox_uid=65534, sandbox_gid=65534)
    return SandboxEngine(EngineConfig(locate_bwrap(), tmp_path / "sandboxes", identity), catalog)


def test_cancelled_sandbox_starts_leave_no_process(engine: SandboxEngine) -> None:
    lang = engine.catalog.resolve("python")
    marker = str(engine.root)

    async def start_and_cancel(delay: float) -> None:
        task = asyncio.ensure_future(engine.start_driver(lang, lang.limits))
        await asyncio.sleep(delay)
        task.cancel()
        result = await asyncio.gather(task, return_exceptions=True)
        if not isinstance(result[0], BaseException):
            await result[0].destroy()

    async def many() -> None:
        rng = random.Random(18)
        for _ in range(40):  # the window is a few ms wide: cancel at many points of the start
            await start_and_cancel(rng.uniform(0.0, 0.01))

    try:
        asyncio.run(many())
        left = survivors([marker], wait_s=3.0)
        assert not left, "abandoned sandbox starts left processes behind:\n" + "\n".join(left)
        assert workspaces(engine.root.parent) == []
    finally:
        kill_all(naming(marker))


def test_stale_workspace_that_is_a_mount_point_is_unmounted_then_removed(
    engine: SandboxEngine,
) -> None:
    stale = engine.root / "pool-0123456789abcdef"
    stale.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(stale)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        (stale / "left.txt").write_text("by a daemon that died")
        assert mounts_under(stale) == [str(stale.resolve())]
        assert engine.clean_stale_workspaces() == 1
        assert not stale.exists() and mounts_under(stale) == []
    finally:
        if mounts_under(stale):
            subprocess.run(["umount", "-l", str(stale)], check=False)
