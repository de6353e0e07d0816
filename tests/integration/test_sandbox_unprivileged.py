"""The escape battery once more, with the daemon as an unprivileged user, as the systemd unit runs it.

When the tests run as root (CI), test_sandbox_escape.py (and the runs in an image,
test_sandbox_images.py) runs again in a subprocess under setpriv
as nobody (65534): user namespaces, the workspace mount holder and the uid/gid maps all take
their other path there. Skipped when the tests already run unprivileged, or when nobody cannot
run this Python or read this checkout (a toolchain or a clone under a private home).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
NOBODY = 65534


@pytest.mark.skipif(os.geteuid() != 0, reason="already unprivileged: the battery ran as this user")
def test_the_escape_battery_passes_for_an_unprivileged_daemon() -> None:
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("util-linux setpriv is missing")
    home = Path(tempfile.mkdtemp(prefix="appliance-unprivileged-"))
    try:
        os.chown(home, NOBODY, NOBODY)
        as_nobody = [setpriv, f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "--"]
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(home),
            "TMPDIR": str(home),
            "PYTHONPATH": str(REPO),
            "PYTHONDONTWRITEBYTECODE": "1",
        }
        probe = subprocess.run(
            [
                *as_nobody,
                sys.executable,
                "-c",
                "import sys, appliance, tests.integration.conftest; print(sys.version)",
            ],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        if probe.returncode != 0:
            pytest.skip(
                f"nobody cannot run {sys.executable} on this checkout: {probe.stderr[-300:]}"
            )
        if probe.stdout.strip() != sys.version:
            # seen with a pyenv interpreter under a private /root (0700): the venv's link could
            # not be followed by nobody, and another Python ran, without this one's toolchain
            pytest.skip(
                f"nobody runs another Python ({probe.stdout.strip()[:40]}) than this one "
                f"({sys.version[:40]}): this interpreter lives under a private home"
            )
        battery = subprocess.run(
            [
                *as_nobody,
                sys.executable,
                "-m",
                "pytest",
                "-p",
                "no:cacheprovider",
                "-q",
                f"--basetemp={home / 'pytest'}",
                str(REPO / "tests" / "integration" / "test_sandbox_escape.py"),
                # runs in an image take the other path too: no setpriv bound in from the host
                str(REPO / "tests" / "integration" / "test_sandbox_images.py"),
            ],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
        )
        assert battery.returncode == 0, battery.stdout[-6000:] + battery.stderr[-2000:]
        assert " passed" in battery.stdout and "skipped" not in battery.stdout.splitlines()[-1]
    finally:
        shutil.rmtree(home, ignore_errors=True)
