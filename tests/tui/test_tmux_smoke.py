"""End to end: `appliance tui` in a real terminal (tmux), driven by keys, read back from the screen.

This is the console as a user starts it: the real CLI entry point, a real terminal with its own
size, the real daemon. Skips where tmux is not installed (apt-get install tmux).
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.integration.daemon import REPO, Daemon

pytestmark = pytest.mark.skipif(
    shutil.which("tmux") is None, reason="tmux is not installed (apt-get install tmux)"
)


class Terminal:
    """One tmux server of our own (its own socket), with one 100x30 window."""

    def __init__(self, socket: Path) -> None:
        self.socket = socket

    def tmux(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["tmux", "-S", str(self.socket), *args], capture_output=True, text=True, timeout=30
        )

    def screen(self) -> str:
        return self.tmux("capture-pane", "-p", "-t", "tui").stdout

    def keys(self, *keys: str) -> None:
        self.tmux("send-keys", "-t", "tui", *keys)

    def wait_for(self, *texts: str, timeout: float = 30.0) -> str:
        deadline = time.monotonic() + timeout
        shown = self.screen()
        while not all(t in shown for t in texts):
            if time.monotonic() > deadline:
                raise AssertionError(f"the terminal never showed {texts}; it shows:\n{shown}")
            time.sleep(0.1)
            shown = self.screen()
        return shown

    def alive(self) -> bool:
        return self.tmux("has-session", "-t", "tui").returncode == 0


def test_appliance_tui_in_a_real_terminal(live_daemon: Daemon, tmp_path: Path) -> None:
    exit_file = tmp_path / "exit-code"
    command = (
        f"{shlex.join([sys.executable, '-m', 'appliance', 'tui', '--url', live_daemon.url])}; "
        f"echo $? > {shlex.quote(str(exit_file))}"
    )
    term = Terminal(tmp_path / "tmux.sock")
    env = {**os.environ, "TERM": "xterm-256color"}
    started = subprocess.run(
        [
            "tmux",
            "-S",
            str(term.socket),
            "new-session",
            "-d",
            "-s",
            "tui",
            "-x",
            "100",
            "-y",
            "30",
            "-c",
            str(REPO),
            command,
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert started.returncode == 0, started.stderr
    try:
        shown = term.wait_for("Overview", "tiny", "events")
        assert "Daemon unreachable" not in shown

        term.keys("2")
        term.wait_for("Models —", "Load", "Unload")
        term.keys("5")
        term.wait_for("Traces —", "filter")
        term.keys("?")
        term.wait_for("Keys", "Everywhere", "Pin/unpin")
        term.keys("Escape")
        deadline = time.monotonic() + 20
        while "Everywhere" in term.screen() and time.monotonic() < deadline:  # help closed
            time.sleep(0.1)
        term.keys("q")  # (right after Escape, a terminal would read the pair as alt+q)
        deadline = time.monotonic() + 20
        while not exit_file.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert exit_file.read_text().strip() == "0", "q leaves the console with exit code 0"
    finally:
        term.tmux("kill-server")
