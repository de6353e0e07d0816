"""`appliance doctor` with the real probes of this machine, against a running daemon and a port
held by another program."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.integration.daemon import REPO, running_daemon


def doctor(tmp_path: Path, port: int) -> tuple[int, dict[str, dict[str, Any]]]:
    cfg = tmp_path / "doctor.toml"
    cfg.write_text(f"[server]\nport = {port}\n[models]\ndefaults = []\n")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "appliance",
            "doctor",
            "--json",
            "--config",
            str(cfg),
            "--state-dir",
            str(tmp_path / "doctor-state"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    checks = {c["name"]: c for c in json.loads(done.stdout)}
    return done.returncode, checks


def test_doctor_on_this_machine(tmp_path: Path) -> None:
    with running_daemon(tmp_path / "d") as d:
        code, checks = doctor(tmp_path, d.port)
    assert len(checks) == 15  # the image store is one of them
    assert checks["python"]["status"] == "ok"
    assert checks["leftover processes"]["status"] == "ok"
    if checks["sandboxes"]["status"] == "ok":  # then quotas are enforced here too
        assert checks["workspace quotas"]["status"] == "ok", checks["workspace quotas"]
    assert (
        checks["config"]["status"] == "ok" and "doctor.toml is valid" in checks["config"]["detail"]
    )
    assert checks["port"]["status"] == "ok" and "already serving" in checks["port"]["detail"]
    assert checks["state directory"]["status"] == "ok"
    assert checks["default models"]["status"] == "ok"
    assert all(c["status"] in ("ok", "warning", "failure") for c in checks.values())
    assert all(c["fix"] for c in checks.values() if c["status"] != "ok"), (
        "every problem says what to do"
    )
    assert code == (1 if any(c["status"] == "failure" for c in checks.values()) else 0)


def test_doctor_names_a_port_held_by_another_program(tmp_path: Path) -> None:
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        code, checks = doctor(tmp_path, other.getsockname()[1])
    assert checks["port"]["status"] == "failure" and "--port" in checks["port"]["fix"]
    assert code == 1
