"""`POST /api/run/batch`: one program against many test cases, in real bwrap sandboxes.

A compiled program is compiled once; each case runs in a fresh sandbox (no case sees another's
files); per-case timeouts, crashes, wrong answers and passes; output caps per case; 413 past the
case limit; a client that disconnects cancels the rest of its batch; a single run is served while
another client's big batch runs (the queue takes turns between them).
"""

from __future__ import annotations

import base64
import shutil
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from appliance.sandbox.batch import output_matches
from tests.conftest import require
from tests.integration.conftest import SandboxServer, sandbox_server_with

C_ECHO_SUM = r"""
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
int main(int argc, char **argv) {
    long a, b;
    if (argc > 1 && strcmp(argv[1], "crash") == 0) abort();
    if (argc > 1 && strcmp(argv[1], "spin") == 0) for (;;) {}
    if (scanf("%ld %ld", &a, &b) != 2) return 2;
    FILE *seen = fopen("seen.txt", "r");
    printf("%ld%s\n", a + b, seen ? " (saw another case's file)" : "");
    FILE *mark = fopen("seen.txt", "w");
    if (mark) fclose(mark);
    return 0;
}
"""


@pytest.fixture(scope="module")
def batch_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SandboxServer]:
    root = tmp_path_factory.mktemp("batch")
    with sandbox_server_with(
        root, pool={"python": 2}, max_concurrent=4, max_batch_cases=50
    ) as server:
        yield server


def batch(server: SandboxServer, body: dict[str, Any], status: int = 200) -> dict[str, Any]:
    with server.client() as c:
        r = c.post("/api/run/batch", json=body)
    assert r.status_code == status, r.text
    out: dict[str, Any] = r.json()
    return out


def test_c_compiles_once_and_each_case_gets_a_verdict(batch_server: SandboxServer) -> None:
    require(shutil.which("gcc") is not None, "gcc is missing")
    cases = [
        {"stdin": "1 2", "expected_stdout": "3\n"},
        {"stdin": "2 2", "expected_stdout": "5\n"},  # a wrong answer
        {"stdin": "", "args": ["crash"]},
        {"stdin": "", "args": ["spin"], "timeout_s": 1},
        {"stdin": "10 20", "expected_stdout": " 30 ", "compare": "whitespace"},
        {"stdin": "4 5", "expected_stdout": "9\n"},
    ]
    out = batch(batch_server, {"language": "c", "code": C_ECHO_SUM, "cases": cases})
    assert out["compile"]["status"] == "ok", out["compile"]
    got = [(c["index"], c["status"], c["passed"]) for c in out["cases"]]
    assert got == [
        (0, "ok", True),
        (1, "ok", False),
        (2, "error", False),
        (3, "timeout", False),
        (4, "ok", True),
        (5, "ok", True),
    ], out["cases"]
    assert out["cases"][1]["reason"] == "the output differs from expected_stdout"
    # every case ran in a workspace of its own: none saw the file another case wrote
    assert all("saw another" not in c["stdout"] for c in out["cases"])
    assert (out["passed"], out["failed"]) == (3, 3)


def test_a_compile_error_is_reported_once(batch_server: SandboxServer) -> None:
    require(shutil.which("gcc") is not None, "gcc is missing")
    out = batch(
        batch_server,
        {"language": "c", "code": "int main( {", "cases": [{"stdin": "1"}, {"stdin": "2"}]},
    )
    assert out["compile"]["status"] == "error"
    assert "error" in out["compile"]["stderr"]
    assert [c["status"] for c in out["cases"]] == ["skipped", "skipped"]
    assert out["failed"] == 2


def test_python_cases_files_and_output_caps(batch_server: SandboxServer) -> None:
    code = (
        "import os, sys\n"
        "print(open('data.txt').read().strip(), os.path.exists('left.txt'), sys.argv[1:])\n"
        "open('left.txt', 'w').write('x')\n"
        "if sys.argv[1:] == ['big']: print('y' * 3_000_000)\n"
    )
    data = base64.b64encode(b"shared").decode()
    own = base64.b64encode(b"mine").decode()
    out = batch(
        batch_server,
        {
            "language": "python",
            "code": code,
            "files": {"data.txt": data},
            "cases": [
                {"expected_stdout": "shared False []\n"},
                {"files": {"data.txt": own}, "expected_stdout": "mine False []\n"},
                {"args": ["big"]},
            ],
        },
    )
    first, second, big = out["cases"]
    assert first["passed"] and second["passed"], out["cases"]
    assert big["stdout_truncated"] and len(big["stdout"]) < 3_000_000


def test_numeric_comparison() -> None:
    assert output_matches("3.1415927\n", "3.14159265", "numeric", 1e-6)
    assert not output_matches("3.2\n", "3.14159265", "numeric", 1e-6)
    assert output_matches("a 1e3", "a 1000.0", "numeric", 0)
    assert not output_matches("a b", "a c", "numeric", 1.0)
    assert not output_matches("1 2", "1", "numeric", 1.0)


def test_a_batch_past_the_case_limit_is_refused(batch_server: SandboxServer) -> None:
    out = batch(
        batch_server,
        {"language": "python", "code": "print(1)", "cases": [{}] * 51},
        status=413,
    )
    assert "max_batch_cases" in out["error"]["message"]
    empty = batch(batch_server, {"language": "python", "code": "1", "cases": []}, status=400)
    assert "at least one case" in empty["error"]["message"]


def test_a_single_run_takes_its_turn_beside_a_big_batch(batch_server: SandboxServer) -> None:
    """Four slots, a batch of 40 half-second cases: a run sent during it waits for one case to
    end, not for the batch (a first-come queue would make it wait about five seconds)."""
    body = {"language": "python", "code": "import time; time.sleep(0.5)", "cases": [{}] * 40}
    done: dict[str, Any] = {}
    t = threading.Thread(target=lambda: done.update(batch(batch_server, body)))
    t.start()
    try:
        time.sleep(1.0)  # the batch holds every slot, with more of its cases waiting
        t0 = time.monotonic()
        single = batch_server.run("python", "print('alone')")
        waited = time.monotonic() - t0
    finally:
        t.join(timeout=120)
    assert single["stdout"] == "alone\n"
    assert done["passed"] == 40
    assert waited < done["duration_ms"] / 1000 / 2, (waited, done["duration_ms"])


def test_a_disconnect_cancels_the_rest_of_the_batch(batch_server: SandboxServer) -> None:
    body = {
        "language": "python",
        "code": "import time; time.sleep(0.5); print('ran')",
        "cases": [{}] * 40,
    }
    with pytest.raises(httpx.ReadTimeout), batch_server.client(timeout=1.0) as c:
        c.post("/api/run/batch", json=body)
    time.sleep(1.5)  # the server notices the disconnect and cancels the cases
    queue = batch_server.service.queue
    assert queue.running == 0 and queue.waiting == 0, (queue.running, queue.waiting)
