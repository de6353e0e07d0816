"""The sandbox HTTP surface under load and misuse, the full daemon, and `appliance run`."""

from __future__ import annotations

import asyncio
import base64
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.integration.conftest import (
    SANDBOX_REPO,
    SandboxServer,
    sandbox_server_with,
    sandbox_wait_pool,
)
from tests.integration.daemon import Daemon, running_daemon


def test_fifty_concurrent_runs_all_complete_and_are_not_mixed_up(
    sandbox_server: SandboxServer,
) -> None:
    code = "import sys\nn = int(sys.stdin.read())\nprint(n * 7, sys.argv[1])\n"

    async def one(c: httpx.AsyncClient, i: int) -> tuple[int, dict[str, object]]:
        r = await c.post(
            "/api/run",
            json={"language": "python", "code": code, "stdin": str(i), "args": [f"run{i}"]},
        )
        assert r.status_code == 200, r.text
        return i, r.json()

    async def burst() -> list[tuple[int, dict[str, object]]]:
        async with httpx.AsyncClient(base_url=sandbox_server.url, timeout=120) as c:
            return await asyncio.gather(*(one(c, i) for i in range(50)))

    results = asyncio.run(burst())
    assert len(results) == 50
    for i, result in results:
        assert result["status"] == "ok", result
        assert result["stdout"] == f"{i * 7} run{i}\n"


def test_languages_list_says_what_is_installed(tmp_path: Path) -> None:
    extra = tmp_path / "profiles"
    extra.mkdir()
    (extra / "cobol.toml").write_text(
        'file = "main.cob"\nrun = ["{cobc}", "{file}"]\n[tools.cobc]\nfind = ["no-such-cobol-compiler"]\n'
    )
    with (
        sandbox_server_with(tmp_path, pool={}, profile_dirs=[str(extra)]) as server,
        server.client() as c,
    ):
        langs = {entry["name"]: entry for entry in c.get("/api/sandboxes/languages").json()}
        assert {
            "python",
            "javascript",
            "bash",
            "sh",
            "perl",
            "c",
            "cpp",
            "java",
            "rust",
            "tcl",
            "sqlite",
        } <= set(langs)
        assert langs["python"]["available"] and langs["python"]["interpreter"]
        assert (
            langs["cobol"]["available"] is False
            and "no-such-cobol-compiler" in langs["cobol"]["detail"]
        )
        r = c.post("/api/run", json={"language": "cobol", "code": "x"})
        assert r.status_code == 424
        assert (
            r.json()["error"]["code"] == "toolchain_missing"
            and "install" in r.json()["error"]["message"]
        )


@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [
        ({"language": "python", "code": "1", "files": {"a.txt": "not base64!"}}, 400, "base64"),
        ({"language": "python", "code": "1", "timeout_s": 100000}, 400, "sandbox.max_timeout_s"),
        ({"language": "python", "code": "1", "memory_mb": 1}, 400, "memory_mb"),
        ({"language": "python", "code": "1", "stdinn": "typo"}, 400, "stdinn"),
        ({"language": "python"}, 400, "code"),
        ({"language": "klingon", "code": "1"}, 404, "available"),
    ],
)
def test_bad_requests_get_clear_errors(
    sandbox_server: SandboxServer, body: dict[str, object], status: int, needle: str
) -> None:
    with sandbox_server.client() as c:
        r = c.post("/api/run", json=body)
    assert r.status_code == status, r.text
    assert needle in r.json()["error"]["message"]


@pytest.fixture(scope="module")
def one_slot_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SandboxServer]:
    with sandbox_server_with(
        tmp_path_factory.mktemp("one-slot"), pool={}, max_concurrent=1, queue_size=1, max_file_mb=1
    ) as server:
        yield server


def test_a_full_queue_fails_fast_with_retry_after(one_slot_server: SandboxServer) -> None:
    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=one_slot_server.url, timeout=60) as c:
            body = {"language": "sh", "code": "sleep 1"}
            return await asyncio.gather(*(c.post("/api/run", json=body) for _ in range(5)))

    responses = asyncio.run(burst())
    codes = sorted(r.status_code for r in responses)
    assert codes.count(200) >= 2 and 503 in codes, codes
    refused = next(r for r in responses if r.status_code == 503)
    assert (
        refused.headers["Retry-After"] == "1"
        and "sandbox.queue_size" in refused.json()["error"]["message"]
    )


def test_oversize_inputs_are_413(one_slot_server: SandboxServer) -> None:
    big = base64.b64encode(b"x" * (1024 * 1024 + 10)).decode()
    with one_slot_server.client() as c:
        r = c.post("/api/run", json={"language": "python", "code": "1", "files": {"big.bin": big}})
    assert r.status_code == 413 and "sandbox.max_file_mb" in r.json()["error"]["message"]


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """The real `appliance serve`, sandboxes wired in like everything else."""
    with running_daemon(
        tmp_path_factory.mktemp("daemon"), config={"sandbox": {"pool": {"python": 1}}}
    ) as d:
        yield d


def _cli(daemon: Daemon, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "appliance", "run", "--url", daemon.url, *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=SANDBOX_REPO,
    )


def test_the_daemon_serves_sandboxes(daemon: Daemon) -> None:
    with daemon.http() as c:
        r = c.post("/api/run", json={"language": "python", "code": "print(6 * 7)"})
        assert r.status_code == 200 and r.json()["stdout"] == "42\n"
        status = c.get("/api/status").json()
        assert status["sandboxes"]["available"] is True


def test_cli_runs_files_and_stdin_and_mirrors_the_exit_status(
    daemon: Daemon, tmp_path: Path
) -> None:
    prog = tmp_path / "prog.py"
    prog.write_text(
        "import sys\nprint('args', sys.argv[1:], sys.stdin.read().strip())\nsys.exit(4)\n"
    )
    done = _cli(daemon, "python", str(prog), "--", "a", "b", stdin="piped")
    assert done.stdout == "args ['a', 'b'] piped\n" and done.returncode == 4

    from_stdin = _cli(daemon, "sh", "-", stdin="echo from stdin\n")
    assert (from_stdin.stdout, from_stdin.returncode) == ("from stdin\n", 0)

    broken = tmp_path / "broken.c"
    broken.write_text("int main(void) { return nope; }\n")
    failed = _cli(daemon, "c", str(broken))
    assert failed.returncode == 1 and "nope" in failed.stderr and "while compiling" in failed.stderr

    slow = _cli(daemon, "sh", "-", "--timeout", "500ms", stdin="sleep 10\n")
    assert slow.returncode == 124 and "[timeout" in slow.stderr

    writer = tmp_path / "writer.py"
    writer.write_text("open('out.txt', 'w').write(open('in.txt').read().upper())\n")
    (tmp_path / "in.txt").write_text("shout")
    fetched = _cli(
        daemon,
        "python",
        str(writer),
        "-f",
        f"{tmp_path / 'in.txt'}",
        "--fetch",
        "out.txt",
        "--out-dir",
        str(tmp_path / "got"),
    )
    assert fetched.returncode == 0, fetched.stderr
    assert (tmp_path / "got" / "out.txt").read_text() == "SHOUT"


def test_cli_lists_languages_and_explains_an_unreachable_daemon(daemon: Daemon) -> None:
    listed = _cli(daemon, "--languages")
    assert listed.returncode == 0 and "python" in listed.stdout and "rust" in listed.stdout
    nowhere = subprocess.run(
        [sys.executable, "-m", "appliance", "run", "--url", "http://127.0.0.1:9", "sh", "-"],
        input="true",
        capture_output=True,
        text=True,
        timeout=60,
        cwd=SANDBOX_REPO,
    )
    assert nowhere.returncode == 1 and "appliance serve" in nowhere.stderr


def test_cli_local_mode_needs_no_daemon(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "appliance", "run", "--local", "bash", "-"],
        input="echo local $((6*7))\n",
        capture_output=True,
        text=True,
        timeout=120,
        cwd=SANDBOX_REPO,
    )
    assert (done.stdout, done.returncode) == ("local 42\n", 0), done.stderr


def test_network_when_the_operator_allows_it_and_the_request_asks(tmp_path: Path) -> None:
    code = (
        "import socket, sys\n"
        "try:\n"
        "    socket.create_connection(('127.0.0.1', int(sys.argv[1])), timeout=2).close()\n"
        "    print('connected')\n"
        "except OSError as exc:\n"
        "    print(type(exc).__name__)\n"
    )
    with sandbox_server_with(tmp_path, pool={"python": 1}, allow_network=True) as server:
        shared = server.run("python", code, network=True, args=[str(server.port)])
        closed = server.run("python", code, args=[str(server.port)])
    assert shared["stdout"] == "connected\n"
    assert closed["stdout"] != "connected\n"


def test_a_pooled_sandbox_killed_while_idle_is_replaced(sandbox_server: SandboxServer) -> None:
    sandbox_wait_pool(sandbox_server, "python")
    victim = sandbox_server.service.pool._pools["python"].idle[0]
    os.kill(victim.process.inner_pid, signal.SIGKILL)  # the OOM killer, say
    deadline = time.monotonic() + 5
    while not victim.process.finished and time.monotonic() < deadline:
        time.sleep(0.01)
    for _ in range(3):
        assert sandbox_server.run("python", "print('fine')")["stdout"] == "fine\n"
    sandbox_wait_pool(sandbox_server, "python")
    deadline = time.monotonic() + 5
    while victim.workspace.path.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not victim.workspace.path.exists()


def test_cli_runs_a_program_against_cases_through_the_daemon(
    daemon: Daemon, tmp_path: Path
) -> None:
    prog = tmp_path / "double.py"
    prog.write_text("print(int(input()) * 2)\n")
    cases = tmp_path / "cases.jsonl"
    cases.write_text(
        '{"stdin": "2", "expected_stdout": "4\\n"}\n'
        "\n"
        '{"stdin": "5", "expected_stdout": "10", "compare": "whitespace"}\n'
    )
    passing = _cli(daemon, "python", str(prog), "--cases", str(cases))
    assert passing.returncode == 0, passing.stderr
    assert "2 passed, 0 failed" in passing.stdout
    cases.write_text('{"stdin": "3", "expected_stdout": "7\\n"}\n')
    failing = _cli(daemon, "python", str(prog), "--cases", str(cases))
    assert failing.returncode == 1 and "FAIL" in failing.stdout
    cases.write_text("not json\n")
    bad = _cli(daemon, "python", str(prog), "--cases", str(cases))
    assert bad.returncode != 0 and "is not JSON" in bad.stderr
