"""What the benchmarks share: resolving a model file, running a daemon, summarising timings."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from appliance.config import load_config
from appliance.errors import ApplianceError


def resolve_model(
    model_id: str, gguf: str | None, config: Path | None = None, state_dir: str | None = None
) -> Path:
    """A GGUF path: the one given, or the profile's file (fetched into the model store if needed)."""
    if gguf:
        path = Path(gguf).expanduser()
        if not path.is_file():
            raise ApplianceError(f"{path} does not exist; pass the path of a GGUF file")
        return path
    from appliance.cli.progress import TerminalProgress
    from appliance.models.catalog import ModelCatalog

    catalog = ModelCatalog.load(load_config(config, state_dir=state_dir))
    return catalog.ensure_local(model_id, progress=TerminalProgress())


def pct(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class BenchDaemon:
    url: str
    proc: subprocess.Popen[bytes]
    root: Path

    def http(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=600)


@contextmanager
def bench_daemon(
    profiles: dict[str, dict[str, object]],
    *,
    config: str = "",
    models_config: str = "",
    sandbox_config: str = "pool = {}",
) -> Iterator[BenchDaemon]:
    """A throwaway `appliance serve` on a free loopback port with the given model profiles
    (`models_config`, `sandbox_config`: the `key = value` lines of its [models] and [sandbox]
    tables; `config`: further tables)."""
    with tempfile.TemporaryDirectory(prefix="appliance-bench-") as tmp:
        root = Path(tmp)
        pdir = root / "profiles"
        pdir.mkdir()
        for mid, prof in profiles.items():
            lines = [f'id = "{mid}"'] + [
                f"{k} = "
                + (
                    f'"{v}"'
                    if isinstance(v, str)
                    else str(v).lower()
                    if isinstance(v, bool)
                    else str(v)
                )
                for k, v in prof.items()
            ]
            (pdir / f"{mid}.toml").write_text("\n".join(lines) + "\n")
        cfg = root / "config.toml"
        cfg.write_text(
            f'[models]\nprofile_dirs = ["{pdir}"]\ndefaults = []\n{models_config}\n[sandbox]\n{sandbox_config}\n{config}'
        )
        port = free_port()
        log = open(root / "daemon.log", "wb")  # noqa: SIM115 (closed below)
        env = {**os.environ, "XDG_CONFIG_HOME": str(root / "xdg")}
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "appliance",
                "serve",
                "--config",
                str(cfg),
                "--state-dir",
                str(root / "state"),
                "--port",
                str(port),
                "--no-fetch",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
        d = BenchDaemon(f"http://127.0.0.1:{port}", proc, root)
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    if httpx.get(d.url + "/api/health", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise ApplianceError(
                        "the benchmark daemon did not start: "
                        + (root / "daemon.log").read_text()[-2000:]
                    )
                time.sleep(0.1)
            yield d
        finally:
            if os.environ.get("APPLIANCE_BENCH_KEEP_LOG"):
                with contextlib.suppress(OSError):
                    shutil.copy(root / "daemon.log", os.environ["APPLIANCE_BENCH_KEEP_LOG"])
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
            log.close()


def wait_spare(d: BenchDaemon, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    with d.http() as c:
        while not c.get("/api/status").json()["scheduler"]["spare_worker_ready"]:
            if time.monotonic() > deadline:
                raise ApplianceError("the spare worker did not come up")
            time.sleep(0.05)


def wait_state(d: BenchDaemon, model: str, state: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    with d.http() as c:
        while c.get(f"/api/models/{model}").json()["state"] != state:
            if time.monotonic() > deadline:
                raise ApplianceError(f"model {model} did not become {state}")
            time.sleep(0.02)


def first_token_ms(client: httpx.Client, body: dict[str, object]) -> float:
    """Send a streaming completion; milliseconds until the first chunk that carries text."""
    t0 = time.perf_counter()
    with client.stream("POST", "/v1/completions", json={**body, "stream": True}) as r:
        if r.status_code != 200:
            raise ApplianceError(f"request failed: {r.status_code} {r.read().decode()[:300]}")
        for line in r.iter_lines():
            if line.startswith("data: {") and '"text":"' in line and '"text":""' not in line:
                return (time.perf_counter() - t0) * 1000.0
    raise ApplianceError("the stream ended without a token")


def peer_runs_like_workers() -> str:
    """Give this process's llama.cpp the OpenMP spin count the workers run with; call it before
    llama_cpp is imported (libgomp reads GOMP_SPINCOUNT once, when it loads). Returns a line for
    the benchmark's header.

    With libgomp's default (300,000 spins) a bare `Llama()` on a 2-core box where anything else
    runs swings from 120 ms to 5 s for the same load and first token (measured beside other
    compiles), so the ratio said more about the neighbours than about the appliance. The workers
    run with WORKER_SPINCOUNT (see its docstring); the peer now does too."""
    if "llama_cpp" in sys.modules:
        return "bare peer: llama_cpp already imported; OpenMP spin count left as it was"
    from appliance.models.worker.process import WORKER_SPINCOUNT

    os.environ.setdefault("GOMP_SPINCOUNT", WORKER_SPINCOUNT)
    return f"bare peer and workers: GOMP_SPINCOUNT={os.environ['GOMP_SPINCOUNT']}"


def bare_llama(path: Path, ctx: int, threads: int, *, embedding: bool = False) -> Any:
    """The peer of every benchmark: llama-cpp-python's `Llama` in this process, with the
    settings the appliance's worker uses (batch 512, every layer offloaded where a GPU is)."""
    import llama_cpp

    return llama_cpp.Llama(
        model_path=str(path),
        n_ctx=ctx,
        n_batch=512,
        n_ubatch=512,
        n_threads=threads,
        n_threads_batch=threads,
        n_gpu_layers=-1,
        embedding=embedding,
        verbose=False,
    )
