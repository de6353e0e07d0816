"""The console against a real daemon on a loopback port, driven with textual's pilot.

Each test does what a user would: press keys on a screen and wait until the screen shows the
outcome (a state change, a streamed reply, a program's output, the banner), and checks the daemon
agrees where it can. The daemon is real: `appliance serve` with the tiny llama model, real bwrap
sandboxes, a real events stream.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.integration.daemon import REPO, Daemon, running_daemon, start_daemon
from tests.tui.conftest import settle, until
from tui.app import ApplianceApp
from tui.client import ApplianceClient
from tui.screens.sandboxes import SandboxesScreen
from tui.screens.sessions import SessionsScreen
from tui.widgets.banner import ConnectionBanner
from tui.widgets.model_table import ModelTable
from tui.widgets.run_output import RunOutput
from tui.widgets.sandbox_table import SandboxTable
from tui.widgets.transcript import TranscriptView
from tui.widgets.transcript_block import TranscriptBlock

SIZE = (100, 32)


def live_app(url: str, token: str | None = None) -> ApplianceApp:
    client = ApplianceClient(url, token, backoff_initial_s=0.2, backoff_max_s=1.0)
    # the tiny model never says it is done: bound its replies so a chat ends soon
    return ApplianceApp(client, poll_s=30, sample_s=30, heartbeat_s=0.3, chat_max_tokens=24)


def banner_text(app: ApplianceApp) -> str:
    banner = app.screen.query_one(ConnectionBanner)
    return str(banner.render()) if banner.display else ""


async def test_load_and_unload_a_model_from_the_models_screen(live_daemon: Daemon) -> None:
    app = live_app(live_daemon.url)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("2")
        table = app.screen.query_one(ModelTable)
        await until(pilot, lambda: "tiny" in table.models, "the tiny model in the table")
        table.move_cursor(row=table.get_row_index("tiny"))

        await pilot.press("l")
        await until(pilot, lambda: table.models["tiny"].state == "ready", "tiny ready")
        assert str(table.get_cell("tiny", "state")) == "ready"
        assert table.models["tiny"].memory_bytes > 0, "the reloaded row shows the model's memory"
        assert live_daemon.model("tiny")["state"] == "ready"
        seen = [(e.data.get("model"), e.data.get("state")) for e in app.recent_events if e.type == "model.state"]
        assert ("tiny", "loading") in seen and ("tiny", "ready") in seen, "the events stream carried the load"

        await pilot.press("u")
        await until(pilot, lambda: table.models["tiny"].state == "unloaded", "tiny unloaded")
        assert str(table.get_cell("tiny", "state")) == "unloaded"
        assert live_daemon.model("tiny")["state"] == "unloaded"


async def test_chat_reply_streams_into_the_transcript(live_daemon: Daemon) -> None:
    app = live_app(live_daemon.url)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("3")
        screen = app.screen
        assert isinstance(screen, SessionsScreen)
        await settle(pilot)
        if not screen.sessions_missing:
            pytest.fail("this daemon has a sessions API: extend this test to chat in a session")
        await until(pilot, lambda: screen.direct_model is not None, "a chat model to talk to")
        screen.direct_model = "tiny"
        await pilot.press("i", *"Say hello", "enter")
        view = screen.query_one(TranscriptView)
        await until(pilot, lambda: not screen.streaming and len(view.query(TranscriptBlock)) >= 2,
                    "the reply, finished")
        blocks = list(view.query(TranscriptBlock))
        assert [b.kind for b in blocks] == ["user", "assistant"]
        assert blocks[0].text == "Say hello"
        assert blocks[1].text.strip(), "the assistant's reply has text"
        assert screen.direct_history[-1] == {"role": "assistant", "content": blocks[1].text}, \
            "what was shown is what the next turn sends back as the assistant's message"
        traces = httpx.get(live_daemon.url + "/api/traces", params={"model": "tiny"}, timeout=30).json()
        assert any("chat/completions" in t["name"] for t in traces), "the daemon served the chat"


def _sandboxes_or_skip(d: Daemon) -> None:
    r = httpx.get(d.url + "/api/sandboxes/languages", timeout=30)
    if r.status_code == 404:
        pytest.skip("this daemon has no sandbox API (/api/sandboxes/languages answers 404)")
    status = httpx.get(d.url + "/api/status", timeout=30).json().get("sandboxes") or {}
    if status.get("available") is False:
        pytest.skip(f"sandboxes cannot run on this host: {status.get('reason')}")


async def test_run_code_in_a_sandbox_and_see_its_output(live_daemon: Daemon) -> None:
    _sandboxes_or_skip(live_daemon)
    app = live_app(live_daemon.url)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("4")
        screen = app.screen
        assert isinstance(screen, SandboxesScreen)
        await until(pilot, lambda: any(x.name == "python" for x in screen.languages), "the language list")
        code = screen.query_one("#code")
        code.text = "import sys\nprint(6 * 7)\nprint('oops', file=sys.stderr)\n"  # type: ignore[attr-defined]
        output = screen.query_one(RunOutput)

        await pilot.press("ctrl+o")
        await until(pilot, lambda: "OK" in output.plain, "the one-shot run's result")
        assert "42" in output.plain and "oops" in output.plain and "one-shot" in output.plain

        table = screen.query_one(SandboxTable)
        await pilot.press("n")
        await until(pilot, lambda: len(table.sandboxes) == 1, "the new sandbox in the list")
        sandbox_id = next(iter(table.sandboxes))
        await pilot.press("ctrl+r")
        await until(pilot, lambda: sandbox_id in output.plain and "OK" in output.plain, "the run in the sandbox")
        assert "42" in output.plain

        await pilot.press("x")
        await pilot.press("y")
        await until(pilot, lambda: not table.sandboxes, "the sandbox gone from the list")
        assert httpx.get(live_daemon.url + "/api/sandboxes", timeout=30).json() == []


async def test_unreachable_banner_appears_and_clears_on_reconnect(tiny_model_path: Path, tmp_path: Path) -> None:
    models = {"tiny": {"source": str(tiny_model_path), "context_size": 512}}
    first = start_daemon(tmp_path / "a", models=models)
    try:
        app = live_app(first.url)
        async with app.run_test(size=SIZE) as pilot:
            await pilot.press("2")
            table = app.screen.query_one(ModelTable)
            await until(pilot, lambda: "tiny" in table.models and app.stream_live, "models and a live stream")
            assert banner_text(app) == ""

            first.stop()
            await until(pilot, lambda: "Daemon unreachable" in banner_text(app), "the unreachable banner")
            assert first.url in banner_text(app)
            await pilot.press("1")  # the console keeps working while the daemon is away
            assert "Daemon unreachable" in banner_text(app), "every screen shows the banner"

            # a new daemon on the same port (the last --port wins); the console finds it by itself
            second = start_daemon(tmp_path / "b", models=models, extra_args=["--port", str(first.port)], wait=False)
            second.url, second.port = first.url, first.port
            try:
                await until(pilot, lambda: banner_text(app) == "", "the banner cleared")
                await until(pilot, lambda: app.stream_live, "the events stream back")
                await pilot.press("2")
                assert banner_text(app) == ""
            finally:
                second.stop()
    finally:
        first.stop()


def _token_cli(state: Path, *args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "appliance", "token", *args, "--state-dir", str(state)],
                          capture_output=True, text=True, cwd=REPO, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


async def test_a_refused_token_shows_a_banner_that_clears_when_the_daemon_accepts(
        tiny_model_path: Path, tmp_path: Path) -> None:
    state = tmp_path / "state"
    token = re.search(r"apl_\S+", _token_cli(state, "create", "laptop"))
    assert token is not None
    with running_daemon(tmp_path, models={"tiny": {"source": str(tiny_model_path), "context_size": 512}}) as d:
        app = live_app(d.url, token="apl_not-the-token")
        async with app.run_test(size=SIZE) as pilot:
            await until(pilot, lambda: "Token refused" in banner_text(app), "the token-refused banner")
            assert "--token" in banner_text(app), "the banner says what to do"
            _token_cli(state, "revoke", "laptop")  # no valid token left: the loopback box is open again
            await until(pilot, lambda: banner_text(app) == "", "the banner cleared")
            await until(pilot, lambda: app.stream_live, "the events stream live")

        good = live_app(d.url, token="apl_not-the-token")
        async with good.run_test(size=SIZE) as pilot:
            await pilot.press("2")
            table = good.screen.query_one(ModelTable)
            await until(pilot, lambda: "tiny" in table.models, "the models of the open box")
