"""A full disk under the state directory: store writes answer 507 with what to free, not a 500.

The state directory is a small tmpfs (mounting one needs root or CAP_SYS_ADMIN; elsewhere the
tests skip), filled to the last byte by a file written beside the database, as a sandbox or a
model download would fill a shared disk.
"""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.store import Store
from appliance.store.agents import AgentSpec
from appliance.store.db import StoreFull
from tests.integration.daemon import running_daemon

PERSONA = "x" * (512 * 1024)  # more than the WAL can take without growing


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "state"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=24m,mode=0700", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(disk: Path) -> Path:
    """Write a file until the disk refuses even one more page."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for size in (1 << 20, 1 << 12, 1):
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, b"\0" * size)
        with pytest.raises(OSError) as info:
            os.write(fd, b"\0")
        assert info.value.errno == errno.ENOSPC
    finally:
        os.close(fd)
    return filler


def test_a_store_write_on_a_full_disk_raises_store_full(small_disk: Path) -> None:
    with Store(small_disk) as store:
        store.agents.create(AgentSpec(name="before", model="m"))
        filler = fill(small_disk)
        with pytest.raises(StoreFull) as info:
            store.agents.create(AgentSpec(name="full", model="m", persona=PERSONA))
        assert info.value.status == 507 and "free" in info.value.message
        filler.unlink()
        assert (
            store.agents.create(AgentSpec(name="after", model="m", persona=PERSONA)).name == "after"
        )


def test_the_api_answers_507_saying_what_to_free(small_disk: Path) -> None:
    root = small_disk.parent
    with running_daemon(root) as d, d.http() as c:
        agent = {"name": "full", "model": "smollm2-135m-instruct", "persona": PERSONA}
        filler = fill(small_disk)
        r = c.post("/api/agents", json=agent)
        assert r.status_code == 507, r.text
        err = r.json()["error"]
        assert err["code"] == "insufficient_storage"
        assert "disk" in err["message"] and "sessions" in err["message"]
        assert c.get("/api/health").status_code == 200
        filler.unlink()
        assert c.post("/api/agents", json=agent).status_code == 201, (
            "space freed, writes work again"
        )
