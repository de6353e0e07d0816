"""Workspace quotas and their mounts over a daemon's life: nothing outlives it.

The ENOSPC behaviour itself is in test_sandbox_escape.py; here: each workspace's tmpfs goes when
its sandbox is deleted, reaped or finished, the mount holder ends with the daemon (so a killed
daemon leaves no tmpfs behind), and the next start removes what is left.
"""

from __future__ import annotations

import ctypes
import os
import signal
import time
from pathlib import Path

import pytest

from appliance.sandbox.quota import HOLDER
from tests.conftest import require
from tests.integration.conftest import sandbox_server_with, sandbox_wait_pool
from tests.integration.daemon import running_daemon


def _holders() -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
                if argv[-2:-1] == [str(HOLDER).encode()] and not argv[0].endswith(b"bwrap"):
                    found.append(int(entry))  # the holder itself, not the bwrap around it
            except OSError:
                continue
    return found


def _descends_from(pid: int, ancestor: int) -> bool:
    while pid > 1:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return False
        pid = int(stat.rsplit(")", 1)[1].split()[1])
        if pid == ancestor:
            return True
    return False


def test_a_killed_daemon_leaves_no_workspace_mounts_and_the_next_start_cleans_up(
    tmp_path: Path,
) -> None:
    with running_daemon(tmp_path) as daemon, daemon.http() as c:
        r = c.post("/api/sandboxes", json={"language": "python"})
        if r.status_code == 503:
            require(False, r.json()["error"]["message"])
        sid = r.json()["id"]
        assert c.put(f"/api/sandboxes/{sid}/files/kept.txt", content=b"x").status_code == 200
        holders = [p for p in _holders() if _descends_from(p, daemon.proc.pid)]
        assert len(holders) == 1, holders
        sandboxes = daemon.state_dir / "sandboxes"
        left = [p for p in sandboxes.iterdir() if p.name.startswith("sbx-")]
        assert len(left) == 1 and list(left[0].iterdir()) == []  # the files are in the tmpfs
        daemon.stop(signal.SIGKILL)
        deadline = time.monotonic() + 10
        while Path(f"/proc/{holders[0]}").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not Path(f"/proc/{holders[0]}").exists(), "the mount holder outlived the daemon"
        assert not os.path.ismount(left[0])
    with running_daemon(tmp_path) as again, again.http() as c:
        assert c.get("/api/sandboxes").json() == []
        assert not left[0].exists()  # removed at start


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can leave a mount in this namespace")
def test_a_stale_mount_on_a_workspace_is_detached_before_removal(tmp_path: Path) -> None:
    from appliance.sandbox.bwrap import locate_bwrap
    from appliance.sandbox.engine import EngineConfig, SandboxEngine
    from appliance.sandbox.identity import SandboxIdentity
    from appliance.sandbox.profiles import ProfileCatalog

    root = tmp_path / "sandboxes"
    stale = root / "run-0123456789abcdef"
    stale.mkdir(parents=True)
    libc = ctypes.CDLL(None, use_errno=True)
    assert libc.mount(b"stale", os.fsencode(stale), b"tmpfs", 0, b"size=1m") == 0
    try:
        (stale / "left.txt").write_text("from a daemon that died")
        identity = SandboxIdentity.for_host(sandbox_uid=65534, sandbox_gid=65534)
        engine = SandboxEngine(EngineConfig(locate_bwrap(), root, identity), ProfileCatalog({}))
        assert engine.clean_stale_workspaces() == 1
        assert not stale.exists() and not os.path.ismount(stale)
    finally:
        if os.path.ismount(stale):
            libc.umount2(os.fsencode(stale), 2)


def _workspace_mounts(holder_pid: int) -> list[str]:
    lines = Path(f"/proc/{holder_pid}/mountinfo").read_text().splitlines()
    return [line.split()[4] for line in lines if " - tmpfs appliance-workspace " in line]


def test_workspace_mounts_are_unmounted_when_sandboxes_are_deleted_or_reaped(
    tmp_path: Path,
) -> None:
    with (
        sandbox_server_with(tmp_path, pool={"python": 1}, idle_ttl_s=1.0) as server,
        server.client() as c,
    ):
        mounts = server.service.engine.mounts
        assert mounts is not None, server.service.engine.quota_problem
        assert len(_workspace_mounts(mounts.pid)) == 1  # the pooled sandbox's
        kept = c.post("/api/sandboxes", json={"language": "sh"}).json()["id"]
        gone = c.post("/api/sandboxes", json={"language": "python"}).json()["id"]
        assert c.post("/api/run", json={"language": "sh", "code": "true"}).status_code == 200
        assert c.delete(f"/api/sandboxes/{gone}").status_code == 204
        deadline = time.monotonic() + 15
        while c.get(f"/api/sandboxes/{kept}").status_code == 200 and time.monotonic() < deadline:
            time.sleep(0.2)  # reaped after a second idle
        sandbox_wait_pool(server, "python")
        deadline = time.monotonic() + 5
        while len(_workspace_mounts(mounts.pid)) > 1 and time.monotonic() < deadline:
            time.sleep(0.05)  # a finished run's workspace goes in the background
        assert len(_workspace_mounts(mounts.pid)) == 1  # the pool's replacement, nothing else
