"""Nothing a daemon starts outlives it: failed start-ups, signals, SIGKILL (real processes, real bwrap).

Each test runs `appliance serve` and then looks, independently of the code under test, for any
process of its state directory that is still alive (tests/integration/procs.py): every descendant
seen while the daemon ran, and anything whose command line or environment names the state
directory. The start-up races are timing-dependent, so the failing starts are tried several times.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from appliance.sandbox.bwrap import locate_bwrap
from appliance.sandbox.preflight import run_preflight
from tests.conftest import require
from tests.integration.daemon import REPO, Daemon, running_daemon, start_daemon, wait_healthy
from tests.integration.procs import (
    DescendantWatch,
    Proc,
    descendants,
    kill_all,
    naming,
    survivors,
    workspaces,
)

TRIES = 3
POOL = {"sandbox": {"pool": {"python": 3}}}


@pytest.fixture(autouse=True)
def _needs_sandboxes() -> None:
    report = run_preflight()
    require(report.ok, f"this host cannot run sandboxes: {report.summary()}")


@contextlib.contextmanager
def watched(d: Daemon) -> Iterator[DescendantWatch]:
    """Record the daemon's descendants; whatever the test's outcome, none is left running."""
    watch = DescendantWatch(d.proc.pid)
    try:
        yield watch
    finally:
        if d.proc.poll() is None:
            d.proc.kill()
            d.proc.wait()
        kill_all(watch.stop() | naming(str(d.state_dir)))


def assert_nothing_left(d: Daemon, watch: DescendantWatch, what: str) -> None:
    left = survivors([str(d.state_dir)], watch.stop())
    assert not left, f"{what}: processes outlived the daemon:\n" + "\n".join(left)


def wait_for_sandbox(d: Daemon, timeout: float = 30.0) -> None:
    """Until the daemon has started its first bwrap."""
    deadline = time.monotonic() + timeout
    marker = str(d.state_dir / "sandboxes")
    while not naming(marker):
        if d.proc.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"the daemon started no sandbox:\n{d.log()}")
        time.sleep(0.002)


def failed_start(root: Path, **kw: Any) -> tuple[Daemon, DescendantWatch]:
    d = start_daemon(root, wait=False, **kw)
    watch = DescendantWatch(d.proc.pid)
    try:
        d.proc.wait(timeout=90)
    except subprocess.TimeoutExpired:
        d.proc.kill()
        raise AssertionError(f"the daemon did not give up:\n{d.log()}") from None
    return d, watch


# --- start-up failures ---------------------------------------------------------------------


def test_a_refused_agent_profile_stops_the_pool_it_started(tmp_path: Path) -> None:
    agents = tmp_path / "agents"
    agents.mkdir()
    (agents / "coder2.toml").write_text('model = "tiny"\nbogus = 1\n')
    for i in range(TRIES):
        d, watch = failed_start(
            tmp_path / f"try{i}", config={**POOL, "agents": {"profile_dirs": [str(agents)]}}
        )
        try:
            assert d.proc.returncode != 0
            assert "coder2.toml:bogus" in d.log()
            assert_nothing_left(d, watch, f"bad agent profile, try {i}")
            assert workspaces(d.state_dir) == []
        finally:
            kill_all(watch.stop() | naming(str(d.state_dir)))


def test_a_port_in_use_fails_before_anything_starts(tmp_path: Path) -> None:
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        for i in range(TRIES):
            d, watch = failed_start(
                tmp_path / f"try{i}", config=POOL, extra_args=["--port", str(port)]
            )
            try:
                assert d.proc.returncode != 0
                assert_nothing_left(d, watch, f"port in use, try {i}")
                assert workspaces(d.state_dir) == []
                assert f"cannot listen on 127.0.0.1:{port}" in d.log() and "--port" in d.log()
                assert "sandboxes ready" not in d.log(), "the pool started for nothing"
            finally:
                kill_all(watch.stop() | naming(str(d.state_dir)))


def test_an_unreadable_database_fails_before_anything_starts(tmp_path: Path) -> None:
    for i in range(TRIES):
        root = tmp_path / f"try{i}"
        (root / "state").mkdir(parents=True)
        (root / "state" / "appliance.db").write_bytes(b"this is not an SQLite database" * 100)
        d, watch = failed_start(root, config=POOL)
        try:
            assert d.proc.returncode != 0
            assert_nothing_left(d, watch, f"unreadable database, try {i}")
            assert workspaces(d.state_dir) == []
        finally:
            kill_all(watch.stop() | naming(str(d.state_dir)))


def test_sigterm_while_the_pool_fills_stops_everything(tmp_path: Path) -> None:
    for i in range(TRIES):
        d = start_daemon(tmp_path / f"try{i}", config=POOL, wait=False)
        with watched(d) as watch:
            wait_for_sandbox(d)
            time.sleep(0.01 * i)
            d.proc.send_signal(signal.SIGTERM)
            assert d.proc.wait(timeout=60) == 0, d.log()
            assert_nothing_left(d, watch, f"SIGTERM while the pool fills, try {i}")
            assert workspaces(d.state_dir) == []


# --- SIGKILL -------------------------------------------------------------------------------


def restart_reports(d: Daemon, left: list[str]) -> str:
    """Start the daemon again on the same state directory; the log of its start."""
    d.log_path.rename(d.root / "killed.log")
    again = start_daemon(d.root, config=POOL)
    try:
        log = again.log()
    finally:
        again.stop()
    stale = [w for w in left if re.match(r"(pool|run|sbx)-", w)]
    if stale:
        assert f"removed {len(stale)} workspaces left by an earlier run" in log, log
    # the first daemon's janitor already ended its processes: this start finds none
    assert 'reason="left by an earlier daemon"' not in log, log
    return log


def test_sigkill_while_the_pool_fills_leaves_no_process(tmp_path: Path) -> None:
    for i in range(TRIES):
        d = start_daemon(tmp_path / f"try{i}", config=POOL, wait=False)
        with watched(d) as watch:
            wait_for_sandbox(d)
            time.sleep(0.005 * i)
            d.proc.kill()
            d.proc.wait()
            assert_nothing_left(d, watch, f"SIGKILL while the pool fills, try {i}")
            restart_reports(d, workspaces(d.state_dir))


def test_sigkill_during_a_run_and_a_model_load_leaves_no_process(
    tmp_path: Path, tiny_model_path: Path
) -> None:
    d = start_daemon(
        tmp_path / "d",
        models={"tiny": {"source": str(tiny_model_path), "context_size": 512}},
        config={"sandbox": {"pool": {}}},
    )
    with watched(d) as watch:
        requests: list[threading.Thread] = []

        def post(path: str, body: dict[str, Any] | None = None) -> None:
            with contextlib.suppress(httpx.HTTPError):
                httpx.post(d.url + path, json=body or {}, timeout=120)

        run = threading.Thread(
            target=post, args=("/api/run", {"language": "bash", "code": "sleep 60"}), daemon=True
        )
        run.start()
        requests.append(run)
        deadline = time.monotonic() + 30
        while not any(_cmdline(pid).startswith("sleep 60") for pid, _ in descendants(d.proc.pid)):
            assert time.monotonic() < deadline, f"the run did not start:\n{d.log()}"
            time.sleep(0.01)
        load = threading.Thread(target=post, args=("/api/models/tiny/load",), daemon=True)
        load.start()
        requests.append(load)
        # the spare worker may still be starting (a jailed one is probed first): wait for a worker
        deadline = time.monotonic() + 30
        while True:
            seen = descendants(d.proc.pid)
            workers = [pid for pid, _ in seen if "appliance.models.worker" in _cmdline(pid)]
            if workers or time.monotonic() > deadline:
                break
            time.sleep(0.01)
        seen |= watch.stop()
        d.proc.kill()
        d.proc.wait()
        assert workers, "no model worker was running when the daemon was killed"
        left = survivors([str(d.state_dir)], seen)
        assert not left, "processes outlived the daemon:\n" + "\n".join(left)
        for t in requests:
            t.join(10)
        restart_reports(d, workspaces(d.state_dir))


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


# --- what an earlier daemon left -----------------------------------------------------------


def stuck_sandbox(workspace: Path) -> Proc:
    """A bwrap sandbox process exactly as a daemon killed mid-start leaves it: its bwrap gone,
    itself blocked before its program, pid 1 of its own pid namespace."""
    workspace.mkdir(parents=True)
    info_r, info_w = os.pipe()
    block_r, block_w = os.pipe()
    bwrap = subprocess.Popen(
        [
            str(locate_bwrap()),
            "--unshare-all",
            "--unshare-user",
            "--die-with-parent",
            "--as-pid-1",
            "--info-fd",
            str(info_w),
            "--userns-block-fd",
            str(block_r),
            "--bind",
            str(workspace),
            "/workspace",
            "--",
            "/bin/true",
        ],
        pass_fds=(info_w, block_r),
        start_new_session=True,
    )
    os.close(info_w)
    os.close(block_r)
    with os.fdopen(info_r) as info:
        child = int(json.loads(info.read())["child-pid"])
    bwrap.kill()
    bwrap.wait()
    os.close(block_w)
    ticks = Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()[19]
    return child, int(ticks)


def test_doctor_reports_a_leftover_and_the_next_start_ends_it(tmp_path: Path) -> None:
    state = tmp_path / "d" / "state"
    stuck = stuck_sandbox(state / "sandboxes" / "pool-feedfacefeedface")
    try:
        time.sleep(0.2)
        assert survivors([str(state)], [stuck], wait_s=0), "the stand-in leftover did not stay"
        done = subprocess.run(
            [sys.executable, "-m", "appliance", "doctor", "--json", "--state-dir", str(state)],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=REPO,
        )
        checks = {c["name"]: c for c in json.loads(done.stdout)}
        found = checks["leftover processes"]
        assert found["status"] == "warning", found
        assert f"pid {stuck[0]} (bwrap of pool-feedfacefeedface)" in found["detail"]
        assert f"kill -9 {stuck[0]}" in found["fix"]
        with running_daemon(tmp_path / "d", config=POOL) as d:
            log = d.log()
            assert re.search(
                rf'killed a process left behind" reason="left by an earlier daemon" pid={stuck[0]} '
                r'kind=sandbox what="bwrap of pool-feedfacefeedface"',
                log,
            ), log
            assert "removed 1 workspaces left by an earlier run" in log
            assert not survivors([], [stuck], wait_s=0)
            done = subprocess.run(
                [sys.executable, "-m", "appliance", "doctor", "--json", "--state-dir", str(state)],
                capture_output=True,
                text=True,
                timeout=120,
                cwd=REPO,
            )
            running = {c["name"]: c for c in json.loads(done.stdout)}["leftover processes"]
            assert running["status"] == "ok" and f"pid {d.proc.pid}" in running["detail"]
    finally:
        kill_all([stuck])


def test_a_second_daemon_on_the_same_state_directory_is_refused(tmp_path: Path) -> None:
    with running_daemon(tmp_path / "first", config=POOL) as first:
        second = start_daemon(
            tmp_path / "second", wait=False, extra_args=["--state-dir", str(first.state_dir)]
        )
        try:
            assert second.proc.wait(timeout=60) != 0
            assert f"another appliance daemon (pid {first.proc.pid})" in second.log()
            wait_healthy(first)  # the first one is untouched: its sandboxes still serve
            with first.http() as c:
                r = c.post("/api/run", json={"language": "python", "code": "print(6 * 7)"})
                assert r.status_code == 200 and r.json()["stdout"] == "42\n", r.text
        finally:
            second.stop()


def test_the_janitor_ends_what_the_kernel_cannot_when_the_daemon_is_killed(
    tmp_path: Path,
) -> None:
    """Deterministic form of the SIGKILL race: the stuck process exists when the daemon dies."""
    d = start_daemon(tmp_path / "d", config={"sandbox": {"pool": {}}})
    stuck = stuck_sandbox(d.state_dir / "sandboxes" / "pool-0badc0de0badc0de")
    try:
        with watched(d) as watch:
            d.proc.kill()
            d.proc.wait()
            assert_nothing_left(d, watch, "SIGKILL with a stuck sandbox process")
            assert not survivors([], [stuck], wait_s=0)
            assert re.search(
                rf'killed a process left behind" reason="the daemon ended" pid={stuck[0]} ', d.log()
            ), d.log()
    finally:
        kill_all([stuck])
