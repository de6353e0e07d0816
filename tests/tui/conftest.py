"""Fixtures of the console tests.

- `live_daemon`: one real `appliance serve` on a loopback port with the tiny model, shared by the
  pilot tests and the tmux smoke test of this session.
- `until(pilot, predicate)`: let the app run until something a user would see is true (bounded,
  so a broken console fails instead of hanging; not a timing assertion).
- `settle(pilot)`: let the app finish its pending calls (all workers but the events stream).

Clock times on screen are local times: the tests pin TZ to UTC so snapshots match everywhere.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from textual.pilot import Pilot

from tests.integration.daemon import Daemon, running_daemon

os.environ["TZ"] = "UTC"
time.tzset()

LONG_LIVED = {"events"}
"""Worker groups that run for the app's whole life."""


@pytest.fixture(scope="session")
def live_daemon(
    tiny_model_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Daemon]:
    root = tmp_path_factory.mktemp("tui-daemon")
    with running_daemon(
        root, models={"tiny": {"source": str(tiny_model_path), "context_size": 512}}
    ) as d:
        yield d


async def until(
    pilot: Pilot[None], predicate: Callable[[], object], what: str, timeout: float = 30.0
) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"the console never showed: {what}")
        await pilot.pause(0.05)


async def settle(pilot: Pilot[None], rounds: int = 200) -> None:
    for _ in range(rounds):
        await pilot.pause()
        busy = [w for w in pilot.app.workers if w.is_running and w.group not in LONG_LIVED]
        if not busy:
            break
    await pilot.pause()
