"""Stateful sandboxes over HTTP: persistent interpreters, files, deletion, reaping, file API refusals."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.integration.conftest import SandboxServer, sandbox_server_with


def _create(c: httpx.Client, language: str, **fields: object) -> str:
    r = c.post("/api/sandboxes", json={"language": language, **fields})
    assert r.status_code == 201, r.text
    sid: str = r.json()["id"]
    return sid


def _exec(c: httpx.Client, sid: str, code: str, **fields: object) -> dict[str, object]:
    r = c.post(f"/api/sandboxes/{sid}/exec", json={"code": code, **fields})
    assert r.status_code == 200, r.text
    result: dict[str, object] = r.json()
    return result


def test_python_variables_imports_and_files_persist(sandbox_server: SandboxServer) -> None:
    with sandbox_server.client() as c:
        sid = _create(c, "python")
        try:
            assert _exec(c, sid, "x = 41\nimport math")["status"] == "ok"
            step = _exec(c, sid, "x + 1")
            assert (step["status"], step["result"]) == ("ok", "42")
            assert _exec(c, sid, "round(math.pi, 2)")["result"] == "3.14"
            printed = _exec(c, sid, "print('out'); import sys; print('err', file=sys.stderr)\nx")
            assert (printed["stdout"], printed["stderr"], printed["result"]) == (
                "out\n",
                "err\n",
                "41",
            )
            _exec(c, sid, "open('notes.txt', 'w').write('from a cell')")
            assert c.get(f"/api/sandboxes/{sid}/files/notes.txt").content == b"from a cell"
            failed = _exec(c, sid, "1 / 0")
            assert failed["status"] == "error" and "ZeroDivisionError" in str(failed["stderr"])
            assert "python_driver" not in str(
                failed["stderr"]
            )  # tracebacks show the user's code only
            assert _exec(c, sid, "x")["result"] == "41"  # an error does not lose the session
            listed = {s["id"] for s in c.get("/api/sandboxes").json()}
            assert sid in listed
        finally:
            c.delete(f"/api/sandboxes/{sid}")


def test_node_session_keeps_globals_and_awaits_promises(sandbox_server: SandboxServer) -> None:
    with sandbox_server.client() as c:
        sid = _create(c, "js")
        try:
            _exec(c, sid, "var total = 20; globalThis.fs = require('fs');")
            assert _exec(c, sid, "total * 2")["result"] == "40"
            assert (
                _exec(c, sid, "new Promise(r => setTimeout(() => r('later'), 50))")["result"]
                == "'later'"
            )
            _exec(c, sid, "fs.writeFileSync('n.txt', 'node wrote')")
            assert c.get(f"/api/sandboxes/{sid}/files/n.txt").content == b"node wrote"
            thrown = _exec(c, sid, "throw new Error('boom')")
            assert thrown["status"] == "error" and "boom" in str(thrown["stderr"])
            assert _exec(c, sid, "total")["result"] == "20"
        finally:
            c.delete(f"/api/sandboxes/{sid}")


def test_a_cell_past_its_timeout_is_interrupted_and_the_session_survives(
    sandbox_server: SandboxServer,
) -> None:
    with sandbox_server.client() as c:
        sid = _create(c, "python")
        try:
            _exec(c, sid, "kept = 'yes'")
            slow = _exec(c, sid, "while True:\n    pass", timeout_s=1)
            assert slow["status"] == "timeout" and "KeyboardInterrupt" in str(slow["stderr"])
            assert _exec(c, sid, "kept")["result"] == "'yes'"
        finally:
            c.delete(f"/api/sandboxes/{sid}")


def test_a_dead_interpreter_is_restarted_on_the_next_exec(sandbox_server: SandboxServer) -> None:
    with sandbox_server.client() as c:
        sid = _create(c, "python")
        try:
            _exec(c, sid, "open('kept.txt', 'w').write('file survives'); v = 1")
            died = _exec(c, sid, "import os; os._exit(3)")
            assert died["status"] == "error" and died["exit_code"] == 3
            after = _exec(c, sid, "open('kept.txt').read()")
            assert after["restarted"] is True and after["result"] == "'file survives'"
            assert "NameError" in str(_exec(c, sid, "v")["stderr"])
        finally:
            c.delete(f"/api/sandboxes/{sid}")


def test_compiled_language_sandboxes_keep_files_between_execs(
    sandbox_server: SandboxServer,
) -> None:
    with sandbox_server.client() as c:
        sid = _create(c, "bash")
        try:
            assert _exec(c, sid, "echo persisted > state.txt")["status"] == "ok"
            second = _exec(
                c,
                sid,
                'cat state.txt; read line; echo "got $line $1"',
                stdin="input\n",
                args=["arg1"],
            )
            assert second["stdout"] == "persisted\ngot input arg1\n"
        finally:
            c.delete(f"/api/sandboxes/{sid}")


def test_delete_removes_the_workspace_and_every_process(sandbox_server: SandboxServer) -> None:
    with sandbox_server.client() as c:
        sid = _create(c, "python")
        _exec(c, sid, "import subprocess; p = subprocess.Popen(['sleep', '300'])")
        sandbox = sandbox_server.service.manager.sandboxes[sid]
        workspace = sandbox.workspace.path
        pid = sandbox.driver.process.inner_pid
        assert workspace.is_dir() and Path(f"/proc/{pid}").exists()
        assert c.delete(f"/api/sandboxes/{sid}").status_code == 204
        assert not workspace.exists()
        deadline = time.monotonic() + 3
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not Path(f"/proc/{pid}").exists()
        gone = c.post(f"/api/sandboxes/{sid}/exec", json={"code": "1"})
        assert gone.status_code == 404 and "POST /api/sandboxes" in gone.json()["error"]["message"]
        assert c.delete(f"/api/sandboxes/{sid}").status_code == 404


def test_one_cell_at_a_time(sandbox_server: SandboxServer) -> None:
    with sandbox_server.client() as c:
        sid = _create(c, "python")
        try:
            slow = threading.Thread(target=_exec, args=(c, sid, "import time; time.sleep(1.5)"))
            slow.start()
            time.sleep(0.5)
            busy = c.post(f"/api/sandboxes/{sid}/exec", json={"code": "1"})
            slow.join()
            assert busy.status_code == 409 and busy.json()["error"]["code"] == "sandbox_busy"
        finally:
            c.delete(f"/api/sandboxes/{sid}")


def test_file_api_refuses_escapes(sandbox_server: SandboxServer, tmp_path: Path) -> None:
    secret = tmp_path / "host-secret.txt"
    secret.write_text("host only")
    with sandbox_server.client() as c:
        sid = _create(c, "python")
        try:
            _exec(
                c,
                sid,
                f"import os; os.symlink({str(secret)!r}, 'out-link'); os.symlink('/etc', 'etc-link');"
                " os.makedirs('d'); open('d/f.txt', 'w').write('inner'); os.symlink('d/f.txt', 'in-link')",
            )
            for path in ("out-link", "etc-link/passwd", "a/%2e%2e/%2e%2e/x"):
                r = c.get(f"/api/sandboxes/{sid}/files/{path}")
                assert r.status_code == 400, (path, r.text)
                assert r.json()["error"]["code"] == "workspace_path_refused"
            # a URL cannot carry an absolute path; whatever it becomes stays inside the workspace
            r = c.get(f"/api/sandboxes/{sid}/files/%2Fetc%2Fpasswd")
            assert r.status_code in (400, 404) and b"root:" not in r.content
            assert c.get(f"/api/sandboxes/{sid}/files/in-link").content == b"inner"
            r = c.put(f"/api/sandboxes/{sid}/files/etc-link/evil", content=b"x")
            assert r.status_code == 400 and not Path("/etc/evil").exists()
            r = c.put(f"/api/sandboxes/{sid}/files/out-link", content=b"overwritten")
            assert r.status_code == 400 and secret.read_text() == "host only"
            assert c.get(f"/api/sandboxes/{sid}/files/missing.txt").status_code == 404
        finally:
            c.delete(f"/api/sandboxes/{sid}")


def test_file_api_answers_loops_and_long_names_with_400(sandbox_server: SandboxServer) -> None:
    long = "n" * 300
    with sandbox_server.client() as c:
        sid = _create(c, "python")
        try:
            _exec(
                c,
                sid,
                "import os; os.symlink('loop', 'loop'); os.symlink('pong', 'ping');"
                " os.symlink('ping', 'pong'); os.symlink('x' * 300, 'far')",
            )
            for path in ("loop", "ping/deeper/file.txt", long, f"d/{long}", "far/inner.txt"):
                for method in ("GET", "PUT"):
                    r = c.request(method, f"/api/sandboxes/{sid}/files/{path}", content=b"x")
                    assert r.status_code == 400, (method, path[:20], r.status_code, r.text)
                    error = r.json()["error"]
                    assert error["code"] == "workspace_path_refused"
                    assert (
                        "symlink" in error["message"]
                        or "255" in error["message"]
                        or ("longer than" in error["message"])
                    )
        finally:
            c.delete(f"/api/sandboxes/{sid}")


@pytest.fixture(scope="module")
def small_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SandboxServer]:
    """No pool, a 1 MB file limit, a short idle TTL and room for two sandboxes."""
    with sandbox_server_with(
        tmp_path_factory.mktemp("small"), pool={}, max_file_mb=1, idle_ttl_s=1.0, max_sandboxes=2
    ) as server:
        yield server


def test_oversize_uploads_are_refused(small_server: SandboxServer) -> None:
    with small_server.client() as c:
        sid = _create(c, "python")
        try:
            r = c.put(f"/api/sandboxes/{sid}/files/big.bin", content=os.urandom(1024 * 1024 + 1))
            assert r.status_code == 413 and "sandbox.max_file_mb" in r.json()["error"]["message"]
            assert (
                c.put(f"/api/sandboxes/{sid}/files/ok.bin", content=b"x" * 1000).status_code == 200
            )
            assert [f["path"] for f in c.get(f"/api/sandboxes/{sid}/files").json()] == ["ok.bin"]
        finally:
            c.delete(f"/api/sandboxes/{sid}")


def test_idle_sandboxes_are_reaped_and_the_count_is_bounded(small_server: SandboxServer) -> None:
    with small_server.client() as c:
        first, second = _create(c, "python"), _create(c, "sh")
        third = c.post("/api/sandboxes", json={"language": "python"})
        assert (
            third.status_code == 503 and "sandbox.max_sandboxes" in third.json()["error"]["message"]
        )
        workspaces = [
            small_server.service.manager.sandboxes[s].workspace.path for s in (first, second)
        ]
        deadline = time.monotonic() + 10
        while c.get("/api/sandboxes").json() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert c.get("/api/sandboxes").json() == []
        assert c.get(f"/api/sandboxes/{first}").status_code == 404
        assert not any(w.exists() for w in workspaces)


def test_one_shot_file_paths_are_checked_too(sandbox_server: SandboxServer) -> None:
    with sandbox_server.client() as c:
        for field, value in (
            ("fetch_files", ["/etc/passwd"]),
            ("fetch_files", ["../../x"]),
            ("files", {"../outside.txt": "eA=="}),
            ("files", {"/tmp/abs.txt": "eA=="}),
        ):
            r = c.post("/api/run", json={"language": "python", "code": "print(1)", field: value})
            assert r.status_code == 400, (field, value, r.text)
            assert r.json()["error"]["code"] == "workspace_path_refused"
