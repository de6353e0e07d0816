"""The console against a real daemon on a loopback port, driven with textual's pilot.

Each test does what a user would: press keys on a screen and wait until the screen shows the
outcome (a state change, a streamed reply, a program's output, the banner), and checks the daemon
agrees where it can. The daemon is real: `appliance serve` with the tiny llama model, real bwrap
sandboxes, a real events stream.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
from textual.widgets import OptionList

from appliance.client import ApplianceClient
from tests.conftest import require
from tests.integration.daemon import REPO, Daemon, running_daemon, start_daemon
from tests.tui.conftest import settle, until
from tui.app import ApplianceApp
from tui.screens.sandboxes import SandboxesScreen
from tui.screens.sessions import SessionsScreen
from tui.widgets.banner import ConnectionBanner
from tui.widgets.model_table import ModelTable
from tui.widgets.pull_list import PullList
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
        # the event changes the state at once; the row's figures follow from a reload
        await until(
            pilot, lambda: table.models["tiny"].memory_bytes > 0, "the memory of the loaded model"
        )
        assert live_daemon.model("tiny")["state"] == "ready"
        seen = [
            (e.data.get("model"), e.data.get("state"))
            for e in app.console_context.recent_events
            if e.type == "model.state"
        ]
        assert ("tiny", "loading") in seen and ("tiny", "ready") in seen, (
            "the events stream carried the load"
        )

        await pilot.press("u")
        await until(pilot, lambda: table.models["tiny"].state == "unloaded", "tiny unloaded")
        assert str(table.get_cell("tiny", "state")) == "unloaded"
        assert live_daemon.model("tiny")["state"] == "unloaded"


async def test_pin_and_add_a_model_from_the_models_screen(
    live_daemon: Daemon, tiny_model_path: Path
) -> None:
    app = live_app(live_daemon.url)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("2")
        table = app.screen.query_one(ModelTable)
        await until(pilot, lambda: "tiny" in table.models, "the tiny model in the table")
        table.move_cursor(row=table.get_row_index("tiny"))
        await pilot.press("p")
        await until(pilot, lambda: table.models["tiny"].pinned, "tiny pinned")
        assert (
            str(table.get_cell("tiny", "pin")) == "●"
            and live_daemon.model("tiny")["pinned"] is True
        )
        await pilot.press("p")
        await until(pilot, lambda: not table.models["tiny"].pinned, "tiny unpinned")
        assert live_daemon.model("tiny")["pinned"] is False

        # a file is registered only from a model directory: the state dir's models/ is one
        added = live_daemon.state_dir / "models" / "tiny-added.gguf"
        shutil.copyfile(tiny_model_path, added)
        await pilot.press("a")
        await pilot.press(*str(added))
        await pilot.press("tab", *"tiny-added", "enter")
        await until(pilot, lambda: "tiny-added" in table.models, "the added model in the table")
        assert live_daemon.model("tiny-added")["state"] == "unloaded"


async def test_pull_a_model_from_the_models_screen(
    live_daemon: Daemon, tiny_model_path: Path
) -> None:
    import functools
    import threading
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    handler = functools.partial(Quiet, directory=str(tiny_model_path.parent))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"url:http://127.0.0.1:{server.server_address[1]}/{tiny_model_path.name}"
    app = live_app(live_daemon.url)
    try:
        async with app.run_test(size=SIZE) as pilot:
            await pilot.press("2")
            table = app.screen.query_one(ModelTable)
            await until(pilot, lambda: "tiny" in table.models, "the tiny model in the table")
            await pilot.press("f", *url, "tab", *"tiny-pulled", "enter")
            pulls = app.screen.query_one(PullList)
            await until(pilot, lambda: "tiny-pulled" in table.models, "the pulled model listed")
            await until(
                pilot,
                lambda: any(p.get("state") == "done" for p in pulls.pulls.values()),
                "the pull shown done",
            )
            assert pulls.display
            assert live_daemon.model("tiny-pulled")["origin"] == "url"
    finally:
        server.shutdown()


async def test_command_palette_loads_a_model_by_name(live_daemon: Daemon) -> None:
    app = live_app(live_daemon.url)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.press("ctrl+p")
        await pilot.press(*"load model tiny")

        def first_hit() -> str:
            hits = app.screen.query_one(OptionList)
            return str(hits.get_option_at_index(0).prompt) if hits.option_count else ""

        await until(pilot, lambda: "Load model tiny" in first_hit(), "the palette entry")
        await pilot.press("enter")
        await until(
            pilot,
            lambda: live_daemon.model("tiny")["state"] == "ready",
            "tiny loaded by the daemon",
        )
        table = app.screen.query_one(ModelTable)
        await until(
            pilot,
            lambda: table.models.get("tiny") is not None and table.models["tiny"].state == "ready",
            "the Models screen showing tiny ready",
        )
        await pilot.press("u")
        await until(
            pilot, lambda: live_daemon.model("tiny")["state"] == "unloaded", "tiny unloaded"
        )


async def test_chat_in_a_session_with_the_reply_streaming_then_fork_and_delete(
    live_daemon: Daemon,
) -> None:
    app = live_app(live_daemon.url)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("3")
        screen = app.screen
        assert isinstance(screen, SessionsScreen)
        await until(
            pilot,
            lambda: "tiny" in screen.chat_models or screen.sessions_missing,
            "the session list",
        )
        assert not screen.sessions_missing, "this daemon has the sessions API"

        await pilot.press("n")  # a new session, with the tiny model and no agent
        picker = app.screen.query_one(OptionList)
        picker.highlighted = next(
            i
            for i in range(picker.option_count)
            if picker.get_option_at_index(i).id == "model:tiny"
        )
        await pilot.press("enter")
        await until(pilot, lambda: screen.open_session is not None, "the new session opened")
        assert screen.open_session is not None
        session_id = screen.open_session.id

        await pilot.press("i", *"Say hello", "enter")
        view = screen.query_one(TranscriptView)
        await until(
            pilot,
            lambda: not screen.streaming and len(view.query(TranscriptBlock)) >= 2,
            "the reply, finished",
        )
        blocks = list(view.query(TranscriptBlock))
        assert [b.kind for b in blocks] == ["user", "assistant"]
        assert blocks[0].text == "Say hello" and blocks[1].text.strip()
        stored = httpx.get(f"{live_daemon.url}/api/sessions/{session_id}", timeout=30).json()[
            "messages"
        ]
        assert [(m["role"], m["content"]) for m in stored] == [
            ("user", "Say hello"),
            ("assistant", blocks[1].text),
        ], "the console shows what the session stored"

        await pilot.press(
            "escape", "f", "y"
        )  # fork (from the list): the copy opens with the same transcript
        await until(
            pilot,
            lambda: screen.open_session is not None and screen.open_session.id != session_id,
            "the fork opened",
        )
        assert screen.open_session is not None
        fork_id = screen.open_session.id
        await until(
            pilot,
            lambda: [b.text for b in view.query(TranscriptBlock)] == [b.text for b in blocks],
            "the fork's transcript",
        )

        await pilot.press("escape", "d", "y")  # delete the fork (the open session), confirmed
        await until(pilot, lambda: screen.open_session is None, "the fork closed")
        listed = httpx.get(f"{live_daemon.url}/api/sessions", timeout=30).json()["items"]
        assert fork_id not in {s["id"] for s in listed} and session_id in {s["id"] for s in listed}


def _sandboxes_or_skip(d: Daemon) -> None:
    r = httpx.get(d.url + "/api/sandboxes/languages", timeout=30)
    require(
        r.status_code != 404,
        "this daemon has no sandbox API (/api/sandboxes/languages answers 404)",
    )
    status = httpx.get(d.url + "/api/status", timeout=30).json().get("sandboxes") or {}
    require(
        status.get("available") is not False,
        f"sandboxes cannot run on this host: {status.get('reason')}",
    )


async def test_run_code_in_a_sandbox_and_see_its_output(live_daemon: Daemon) -> None:
    _sandboxes_or_skip(live_daemon)
    app = live_app(live_daemon.url)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("4")
        screen = app.screen
        assert isinstance(screen, SandboxesScreen)
        await until(
            pilot, lambda: any(x.name == "python" for x in screen.languages), "the language list"
        )
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
        await until(
            pilot,
            lambda: sandbox_id in output.plain and "OK" in output.plain,
            "the run in the sandbox",
        )
        assert "42" in output.plain

        await pilot.press("x")
        await pilot.press("y")
        await until(pilot, lambda: not table.sandboxes, "the sandbox gone from the list")
        assert httpx.get(live_daemon.url + "/api/sandboxes", timeout=30).json() == []


async def test_unreachable_banner_appears_and_clears_on_reconnect(
    tiny_model_path: Path, tmp_path: Path
) -> None:
    models = {"tiny": {"source": str(tiny_model_path), "context_size": 512}}
    first = start_daemon(tmp_path / "a", models=models)
    try:
        app = live_app(first.url)
        async with app.run_test(size=SIZE) as pilot:
            await pilot.press("2")
            table = app.screen.query_one(ModelTable)
            await until(
                pilot,
                lambda: "tiny" in table.models and app.console_context.stream_live,
                "models and a live stream",
            )
            assert banner_text(app) == ""

            first.stop()
            await until(
                pilot, lambda: "Daemon unreachable" in banner_text(app), "the unreachable banner"
            )
            assert first.url in banner_text(app)
            await pilot.press("1")  # the console keeps working while the daemon is away
            assert "Daemon unreachable" in banner_text(app), "every screen shows the banner"

            # a new daemon on the same port (the last --port wins); the console finds it by itself
            second = start_daemon(
                tmp_path / "b", models=models, extra_args=["--port", str(first.port)], wait=False
            )
            second.url, second.port = first.url, first.port
            try:
                await until(pilot, lambda: banner_text(app) == "", "the banner cleared")
                await until(
                    pilot, lambda: app.console_context.stream_live, "the events stream back"
                )
                await pilot.press("2")
                assert banner_text(app) == ""
            finally:
                second.stop()
    finally:
        first.stop()


def _token_cli(state: Path, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "appliance", "token", *args, "--state-dir", str(state)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


async def test_a_refused_token_shows_a_banner_that_clears_when_the_daemon_accepts(
    tiny_model_path: Path, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    token = re.search(r"apl_\S+", _token_cli(state, "create", "laptop"))
    assert token is not None
    with running_daemon(
        tmp_path, models={"tiny": {"source": str(tiny_model_path), "context_size": 512}}
    ) as d:
        app = live_app(d.url, token="apl_not-the-token")
        async with app.run_test(size=SIZE) as pilot:
            await until(
                pilot, lambda: "Token refused" in banner_text(app), "the token-refused banner"
            )
            assert "--token" in banner_text(app), "the banner says what to do"
            _token_cli(
                state, "revoke", "laptop"
            )  # no valid token left: the loopback box is open again
            await until(pilot, lambda: banner_text(app) == "", "the banner cleared")
            await until(pilot, lambda: app.console_context.stream_live, "the events stream live")

        good = live_app(d.url, token="apl_not-the-token")
        async with good.run_test(size=SIZE) as pilot:
            await pilot.press("2")
            table = good.screen.query_one(ModelTable)
            await until(pilot, lambda: "tiny" in table.models, "the models of the open box")
