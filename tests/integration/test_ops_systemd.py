"""The daemon under a systemd-like supervisor: the unit verifies, sd_notify over a real
NOTIFY_SOCKET sees READY=1, WATCHDOG=1 pings and STOPPING=1, and SIGTERM stops it gracefully
with requests in flight (finished within the grace period, cancelled after it), exiting 0."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from appliance.host.service import render_unit, shipped_unit_path
from tests.conftest import require
from tests.integration.daemon import Daemon, start_daemon

systemd_analyze = shutil.which("systemd-analyze")


@pytest.mark.skipif(
    systemd_analyze is None, reason="systemd-analyze is not installed (apt install systemd)"
)
def test_the_shipped_unit_verifies(tmp_path: Path) -> None:
    unit = tmp_path / "appliance.service"
    unit.write_text(
        render_unit(
            shipped_unit_path().read_text(),
            python=sys.executable,
            user="root",
            config=tmp_path / "config.toml",
        )
    )
    done = subprocess.run(
        [str(systemd_analyze), "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    own = [
        line
        for line in (done.stdout + done.stderr).splitlines()
        if str(unit) in line or "appliance" in line
    ]
    assert done.returncode == 0, done.stderr
    assert not [
        line for line in own if "Unknown" in line or "ignoring" in line or "Invalid" in line
    ], own
    text = unit.read_text()
    for needed in (
        "Type=notify",
        "WatchdogSec=",
        "StateDirectory=appliance",
        "RuntimeDirectory=appliance",
        "KillMode=mixed",
        "Delegate=yes",
        "NoNewPrivileges=yes",
    ):
        assert needed in text


def notify_listener(path: Path) -> tuple[socket.socket, list[str], threading.Thread]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(0.5)
    got: list[str] = []

    def read() -> None:
        while True:
            try:
                got.append(sock.recv(4096).decode())
            except TimeoutError:
                continue
            except OSError:
                return

    t = threading.Thread(target=read, daemon=True)
    t.start()
    return sock, got, t


def wait_for(cond: object, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_sd_notify_ready_watchdog_stopping(tmp_path: Path) -> None:
    path = Path("/tmp") / f"appliance-notify-{tmp_path.name}.sock"  # AF_UNIX paths are short
    path.unlink(missing_ok=True)
    sock, got, reader = notify_listener(path)
    try:
        d = start_daemon(tmp_path, env={"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "200000"})
        try:
            wait_for(lambda: any(m.startswith("READY=1") for m in got))
            ready = next(m for m in got if m.startswith("READY=1"))
            assert (
                f"MAINPID={d.proc.pid}" in ready
                and f"STATUS=serving on http://127.0.0.1:{d.port}" in ready
            )
            assert httpx.get(d.url + "/api/health").status_code == 200, (
                "READY means the socket is bound"
            )
            wait_for(lambda: sum(m == "WATCHDOG=1" for m in got) >= 3)
            assert d.stop() == 0
        finally:
            d.stop()
        wait_for(lambda: any(m.startswith("STOPPING=1") for m in got))
        first_ready = next(i for i, m in enumerate(got) if m.startswith("READY=1"))
        stopping = next(i for i, m in enumerate(got) if m.startswith("STOPPING=1"))
        assert first_ready < stopping
        assert "serving on" not in " ".join(got[stopping:])
    finally:
        sock.close()
        reader.join(2)
        path.unlink(missing_ok=True)


def sandboxes_available(d: Daemon) -> bool:
    return bool(
        httpx.get(d.url + "/api/status", timeout=30).json().get("sandboxes", {}).get("available")
    )


def run_in_background(d: Daemon, code: str) -> tuple[threading.Thread, dict[str, object]]:
    out: dict[str, object] = {}

    def go() -> None:
        try:
            out["response"] = httpx.post(
                d.url + "/api/run",
                json={"language": "python", "code": code, "timeout_s": 30},
                timeout=60,
            )
        except httpx.HTTPError as exc:
            out["error"] = exc

    t = threading.Thread(target=go)
    t.start()
    return t, out


def wait_running(d: Daemon) -> None:
    wait_for(lambda: httpx.get(d.url + "/api/status").json()["sandboxes"]["runs"]["running"] >= 1)


def test_sigterm_lets_a_request_in_flight_finish_and_exits_0(tmp_path: Path) -> None:
    d = start_daemon(tmp_path, config={"server": {"shutdown_grace_s": 20}})
    try:
        require(
            sandboxes_available(d),
            "sandboxes are not available here; they provide a request that takes seconds",
        )
        t, out = run_in_background(d, "import time; time.sleep(2); print('finished')")
        wait_running(d)
        d.proc.send_signal(signal.SIGTERM)
        # the listening socket closes first: new connections are refused while the run finishes
        wait_for(lambda: _refused(d))
        t.join(30)
        r = out.get("response")
        assert isinstance(r, httpx.Response), out
        assert (
            r.status_code == 200 and r.json()["status"] == "ok" and "finished" in r.json()["stdout"]
        )
        assert d.proc.wait(30) == 0
    finally:
        d.stop()
    log = d.log()
    assert "msg=stopping" in log and "msg=stopped" in log


def test_sigterm_cancels_what_outlives_the_grace_period(tmp_path: Path) -> None:
    d = start_daemon(tmp_path, config={"server": {"shutdown_grace_s": 1}})
    try:
        require(
            sandboxes_available(d),
            "sandboxes are not available here; they provide a request that takes seconds",
        )
        t, out = run_in_background(d, "import time; time.sleep(25); print('too late')")
        wait_running(d)
        assert _sandbox_processes(tmp_path), "the run is visible as processes under the state dir"
        d.proc.send_signal(signal.SIGTERM)
        assert d.proc.wait(20) == 0, "cancelled after the grace period, then a clean exit"
        t.join(30)
    finally:
        d.stop()
    r = out.get("response")
    assert "error" in out or (isinstance(r, httpx.Response) and "too late" not in r.text)
    assert "timeout graceful shutdown exceeded" in d.log()
    wait_for(lambda: not _sandbox_processes(tmp_path), timeout=10)  # stopped with the daemon


def test_sigterm_with_a_model_request_in_flight(tiny_model_path: Path, tmp_path: Path) -> None:
    d = start_daemon(
        tmp_path,
        models={"tiny": {"source": str(tiny_model_path), "context_size": 512}},
        config={"server": {"shutdown_grace_s": 30}},
    )
    try:
        # 80 tokens of the tiny model take a second or two on a busy CPU: in flight at the
        # signal, finished well inside the grace period
        with (
            httpx.Client(base_url=d.url, timeout=60) as c,
            c.stream(
                "POST",
                "/v1/completions",
                json={"model": "tiny", "prompt": "Once", "max_tokens": 80, "stream": True},
            ) as s,
        ):
            lines = s.iter_lines()
            first = next(line for line in lines if line.startswith("data: {"))
            worker = d.model("tiny")["worker_pid"]
            d.proc.send_signal(signal.SIGTERM)
            rest = [line for line in lines if line]
        assert first and rest[-1] == "data: [DONE]", "the stream in flight finishes"
        assert d.proc.wait(30) == 0
        wait_for(lambda: not _alive(worker), timeout=10)
    finally:
        d.stop()


def _refused(d: Daemon) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", d.port), timeout=0.5):
            return False
    except OSError:
        return True


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


def _sandbox_processes(root: Path) -> list[str]:
    """Processes whose command line names this daemon's sandbox directory (bwrap and its child)."""
    done = subprocess.run(
        ["pgrep", "-f", str(root / "state" / "sandboxes")], capture_output=True, text=True
    )
    return done.stdout.split()
