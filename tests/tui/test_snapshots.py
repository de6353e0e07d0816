"""Snapshots of every screen at 80x24 and 160x48, from a daemon with fixed answers.

Each snapshot is the real console (client, workers, messages, widgets) over `FakeDaemon`'s fixed
data, with a fixed clock and polling turned off, so the picture only changes when the console's
look does. Update them with `pytest tests/tui --snapshot-update` after an intended change, and
look at the report it writes before committing.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from textual.pilot import Pilot

from appliance.client import ApplianceClient
from appliance.client.records import Session
from tests.tui.conftest import settle
from tests.tui.fake_daemon import NOW, SESSIONS, FakeDaemon, UnreachableDaemon
from tui.app import ApplianceApp
from tui.screens.overview import OverviewScreen
from tui.screens.sessions import SessionsScreen
from tui.widgets.session_tree import SessionTree

SIZES = [pytest.param((80, 24), id="80x24"), pytest.param((160, 48), id="160x48")]

Scenario = Callable[[Pilot[None]], Awaitable[None]]


def fake_app(daemon: Any = None) -> ApplianceApp:
    daemon = daemon or FakeDaemon()
    client = ApplianceClient(
        "http://appliance.test:8420", transport=daemon.transport(), backoff_initial_s=3600
    )
    return ApplianceApp(client, poll_s=3600, sample_s=3600, heartbeat_s=3600, clock=lambda: NOW)


async def overview(pilot: Pilot[None]) -> None:
    await settle(pilot)
    screen = pilot.app.screen
    assert isinstance(screen, OverviewScreen)
    for _ in range(7):  # a few more GPU samples, for the sparklines
        screen.sample()
        await settle(pilot)


async def models(pilot: Pilot[None]) -> None:
    await settle(pilot)
    await pilot.press("2")
    await settle(pilot)
    await pilot.press("down", "down", "down")  # the failed model: its error shows below the table
    await settle(pilot)


async def sessions(pilot: Pilot[None]) -> None:
    await settle(pilot)
    await pilot.press("3")
    await settle(pilot)
    screen = pilot.app.screen
    assert isinstance(screen, SessionsScreen)
    screen.query_one(SessionTree).select_session("ses_fib")
    screen.open(Session.from_json(SESSIONS[1]))
    await settle(pilot)


async def sessions_missing(pilot: Pilot[None]) -> None:
    await settle(pilot)
    await pilot.press("3")
    await settle(pilot)


async def sandboxes(pilot: Pilot[None]) -> None:
    await settle(pilot)
    await pilot.press("4")
    await settle(pilot)
    await pilot.press("ctrl+o")
    await settle(pilot)


async def traces(pilot: Pilot[None]) -> None:
    await settle(pilot)
    await pilot.press("5")
    await settle(pilot)


async def help_keys(pilot: Pilot[None]) -> None:
    await settle(pilot)
    await pilot.press("question_mark")
    await settle(pilot)


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize(
    "scenario", [overview, models, sessions, sandboxes, traces, help_keys], ids=lambda f: f.__name__
)
def test_screen(snap_compare: Any, scenario: Scenario, size: tuple[int, int]) -> None:
    assert snap_compare(fake_app(), terminal_size=size, run_before=scenario)


def test_unreachable_banner(snap_compare: Any) -> None:
    assert snap_compare(fake_app(UnreachableDaemon()), terminal_size=(80, 24), run_before=settle)


def test_sessions_not_available_offers_direct_chat(snap_compare: Any) -> None:
    daemon = FakeDaemon(missing=("/api/agents", "/api/sessions"))
    assert snap_compare(fake_app(daemon), terminal_size=(80, 24), run_before=sessions_missing)
