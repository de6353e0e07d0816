"""What one client can make the daemon spend through sandboxes, bounded: the files a run returns,
and the memory sandboxes may reserve (with a share kept for agents).

The fetch_files test runs against a real `appliance serve` so the daemon's own peak memory can be
read from /proc; the others use the sandbox-only server of conftest.py.
"""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from tests.integration.conftest import SandboxServer
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
            pytest.skip(warm.json()["error"]["message"])
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
