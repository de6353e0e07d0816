"""Start a real `appliance serve` on a free loopback port for integration tests."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k} = {toml_value(x)}" for k, x in v.items()) + "}"
    raise TypeError(v)


def toml_table(d: dict[str, Any]) -> str:
    return "\n".join(f"{k} = {toml_value(v)}" for k, v in d.items()) + "\n"


@dataclass
class Daemon:
    url: str
    port: int
    proc: subprocess.Popen[bytes]
    root: Path
    log_path: Path
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def state_dir(self) -> Path:
        return self.root / "state"

    def http(self, timeout: float = 120.0) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=timeout, headers=self.headers)

    def openai(self, **kw: Any) -> Any:
        import openai

        return openai.OpenAI(
            base_url=self.url + "/v1",
            api_key=self.headers.get("Authorization", "Bearer none")[7:],
            **kw,
        )

    def model(self, model_id: str) -> dict[str, Any]:
        with self.http() as c:
            r = c.get(f"/api/models/{model_id}")
            r.raise_for_status()
            return r.json()  # type: ignore[no-any-return]

    def wait_state(self, model_id: str, states: set[str], timeout: float = 30.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        m = self.model(model_id)
        while m["state"] not in states:
            if time.monotonic() > deadline:
                raise AssertionError(f"{model_id} stayed {m['state']}, wanted {states}: {m}")
            time.sleep(0.05)
            m = self.model(model_id)
        return m

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def start_daemon(
    root: Path,
    *,
    models: dict[str, dict[str, Any]] | None = None,
    config: dict[str, dict[str, Any]] | None = None,
    env: dict[str, str] | None = None,
    extra_args: list[str] | None = None,
    wait: bool = True,
    preexec_fn: Callable[[], None] | None = None,
) -> Daemon:
    """Write a config with the given model profiles and run `appliance serve` until healthy.

    `preexec_fn` runs in the child before `appliance serve` starts (a umask, an rlimit)."""
    root.mkdir(parents=True, exist_ok=True)
    prof_dir = root / "profiles"
    prof_dir.mkdir(exist_ok=True)
    for mid, prof in (models or {}).items():
        (prof_dir / f"{mid}.toml").write_text(toml_table({"id": mid, **prof}))
    sections: dict[str, dict[str, Any]] = {
        "models": {"profile_dirs": [str(prof_dir)], "defaults": []},
        "sandbox": {"pool": {}},
    }
    for name, values in (config or {}).items():
        sections.setdefault(name, {}).update(values)
    cfg = root / "config.toml"
    cfg.write_text("".join(f"[{name}]\n{toml_table(v)}\n" for name, v in sections.items()))
    port = free_port()
    log_path = root / "daemon.log"
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", "XDG_CONFIG_HOME": str(root / "xdg")}
    full_env.update(env or {})
    args = [
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
        *(extra_args or []),
    ]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            args,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=full_env,
            cwd=REPO,
            preexec_fn=preexec_fn,
        )
    d = Daemon(url=f"http://127.0.0.1:{port}", port=port, proc=proc, root=root, log_path=log_path)
    if wait:
        wait_healthy(d)
    return d


def wait_healthy(d: Daemon, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if d.proc.poll() is not None:
            raise AssertionError(f"daemon exited with {d.proc.returncode}:\n{d.log()}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(d.url + "/api/health", timeout=1).status_code == 200:
                return
        time.sleep(0.1)
    d.stop()
    raise AssertionError(f"daemon did not become healthy:\n{d.log()}")


@contextlib.contextmanager
def running_daemon(root: Path, **kw: Any) -> Iterator[Daemon]:
    d = start_daemon(root, **kw)
    try:
        yield d
    finally:
        d.stop()
