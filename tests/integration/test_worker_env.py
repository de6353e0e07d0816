"""The environment a real worker process starts with: no API tokens, bounded OpenMP spinning."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.models.worker.process import WORKER_SPINCOUNT, ProcessSpawner


def environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode().split("=", 1) for item in raw if b"=" in item)


async def test_workers_spin_briefly_and_never_see_tokens(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GOMP_SPINCOUNT", raising=False)
    monkeypatch.setenv("APPLIANCE_TOKEN", "apl_secret")
    w = await ProcessSpawner().spawn()
    try:
        env = environ(w.pid)
    finally:
        await w.close()
    assert env["GOMP_SPINCOUNT"] == WORKER_SPINCOUNT
    assert "APPLIANCE_TOKEN" not in env


async def test_an_operator_spin_count_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GOMP_SPINCOUNT", "42")
    w = await ProcessSpawner().spawn()
    try:
        assert environ(w.pid)["GOMP_SPINCOUNT"] == "42"
    finally:
        await w.close()
