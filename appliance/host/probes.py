"""What `appliance doctor` reads of the host, each through one replaceable function.

`DoctorProbes` bundles them with the real implementations as defaults; tests replace single
fields to drive each check (appliance.host.doctor) through its passing and failing cases
without the hardware. Probes only read: the cgroup probe looks at the delegation the daemon would
use without preparing it, and the port probe binds and closes at once.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import stat
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from appliance.config import Config, load_config
from appliance.errors import ApplianceError
from appliance.host.janitor import lock_holder
from appliance.host.leftovers import find_leftovers
from appliance.sandbox.cgroup import own_cgroup
from appliance.sandbox.images.store import StoreReport, inspect_store
from appliance.sandbox.preflight import PreflightReport, run_preflight
from appliance.telemetry.nvml import Nvml


@dataclass(frozen=True)
class LlamaBuild:
    version: str
    cuda: bool
    """Built with the CUDA backend (libggml-cuda next to the bindings)."""
    gpu_offload: bool
    """llama.cpp sees a GPU device it can offload layers to."""


@dataclass(frozen=True)
class GpuInfo:
    driver: str | None
    names: list[str]
    why_none: str = ""


@dataclass(frozen=True)
class CgroupInfo:
    version: int | None
    """2 for the unified hierarchy, 1 for a legacy-only host, None when unreadable."""
    path: str = ""
    controllers: frozenset[str] = frozenset()
    writable: bool = False


PortState = Literal["free", "appliance", "taken"]


@dataclass(frozen=True)
class LeftoverInfo:
    daemon_pid: int | None
    """The daemon that holds the state directory now (0: its pid is unreadable), or None."""
    processes: list[str] = field(default_factory=list)
    """Sandbox and worker processes of the state directory that outlived their daemon."""


# --- the real probes ----------------------------------------------------------------------


def probe_llama() -> LlamaBuild | str:
    """The llama-cpp-python build, or the import error."""
    try:
        import llama_cpp
    except Exception as exc:  # ImportError, or a missing shared library (OSError)
        return f"{type(exc).__name__}: {exc}"
    lib_dir = Path(llama_cpp.__file__).parent / "lib"
    cuda = any(lib_dir.glob("libggml-cuda*")) if lib_dir.is_dir() else False
    return LlamaBuild(
        version=str(getattr(llama_cpp, "__version__", "?")),
        cuda=cuda,
        gpu_offload=bool(llama_cpp.llama_supports_gpu_offload()),
    )


def probe_gpus() -> GpuInfo:
    nvml = Nvml.open()
    if nvml is None:
        return GpuInfo(driver=None, names=[], why_none=Nvml.why_unavailable())
    return GpuInfo(driver=nvml.driver_version(), names=[g.name for g in nvml.gpus()])


def probe_cgroup(mount: Path = Path("/sys/fs/cgroup")) -> CgroupInfo:
    rel = own_cgroup()
    if rel is None:
        return CgroupInfo(version=1 if (mount / "memory").is_dir() else None)
    base = mount / rel.lstrip("/")
    if base.name == "daemon" and (base.parent / "sandboxes").is_dir():
        base = base.parent
    try:
        controllers = frozenset((base / "cgroup.controllers").read_text().split())
    except OSError:
        controllers = frozenset()
    writable = os.access(base / "cgroup.subtree_control", os.W_OK) and os.access(
        base / "cgroup.procs", os.W_OK
    )
    return CgroupInfo(version=2, path=str(base), controllers=controllers, writable=writable)


def probe_writable(path: Path) -> str | None:
    """None when a file can be created in `path` (made if missing), else the reason."""
    try:
        path.mkdir(parents=True, exist_ok=True, mode=0o700)  # a state dir it makes is private
        with tempfile.NamedTemporaryFile(dir=path, prefix=".doctor-"):
            pass
    except OSError as exc:
        return exc.strerror or str(exc)
    return None


def probe_exposed(state_dir: Path) -> list[str]:
    """The state directory and database files that group or other users may read, with modes."""
    from appliance.private import readable_by_others

    out = []
    db = state_dir / "appliance.db"
    for path in (state_dir, db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")):
        try:
            if readable_by_others(path):
                out.append(f"{path} (mode {stat.S_IMODE(path.stat().st_mode):04o})")
        except OSError:
            continue
    return out


def probe_free_bytes(path: Path) -> int:
    p = path
    while not p.exists() and p != p.parent:
        p = p.parent
    return shutil.disk_usage(p).free


def probe_port(host: str, port: int) -> PortState:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
            return "free"
        except OSError:
            pass
    import httpx

    target = "127.0.0.1" if host in ("0.0.0.0", "") else ("[::1]" if host == "::" else host)
    try:
        r = httpx.get(f"http://{target}:{port}/api/health", timeout=2)
        if r.status_code == 200 and r.json().get("status") == "ok":
            return "appliance"
    except Exception:
        pass
    return "taken"


def probe_leftovers(state_dir: Path) -> LeftoverInfo:
    holder = lock_holder(state_dir)
    if holder is not None:  # a live daemon's sandboxes and workers are its own
        return LeftoverInfo(daemon_pid=holder)
    return LeftoverInfo(None, [f"pid {lo.pid} ({lo.what})" for lo in find_leftovers(state_dir)])


def probe_valid_tokens(state_dir: Path) -> int:
    from appliance.store import Store

    if not (state_dir / "appliance.db").exists():
        return 0
    with Store(state_dir) as store:
        return store.tokens.count_valid()


def probe_default_models(cfg: Config) -> dict[str, bool | str]:
    """Per default model id: fetched (True), not yet (False), or why it is not a known model."""
    from appliance.models.catalog import ModelCatalog

    catalog = ModelCatalog.load(cfg)
    out: dict[str, bool | str] = {}
    for mid in cfg.models.defaults:
        try:
            out[mid] = catalog.local_path(mid) is not None
        except ApplianceError as exc:
            out[mid] = exc.message
    return out


def probe_worker_jail(cfg: Config) -> str | None:
    """None when model workers can run jailed on this host, else why not."""
    from appliance.host.worker_jail import WorkerJail
    from appliance.models.registration import model_directories
    from appliance.sandbox.bwrap import locate_bwrap

    try:
        bwrap = locate_bwrap(cfg.sandbox.bwrap)
    except ApplianceError as exc:
        return exc.message
    state = Path(cfg.state_dir)
    return WorkerJail(
        bwrap, state_dir=state, kv_dir=state / "kv", model_dirs=model_directories(cfg)
    ).probe()


def probe_workspace_quota(cfg: Config) -> str | None:
    """None when workspaces can be size-limited tmpfs mounts (appliance.sandbox.quota): a real
    mount holder is started and mounts a tiny tmpfs in a temporary directory; else why not."""
    from appliance.sandbox.bwrap import locate_bwrap
    from appliance.sandbox.identity import SandboxIdentity
    from appliance.sandbox.quota import QuotaUnavailable, WorkspaceMounts

    if cfg.sandbox.workspace_quota == "poll":
        return 'sandbox.workspace_quota is "poll"'
    try:
        bwrap = locate_bwrap(cfg.sandbox.bwrap)
        identity = SandboxIdentity.for_host(
            sandbox_uid=cfg.sandbox.sandbox_uid, sandbox_gid=cfg.sandbox.sandbox_gid
        )
    except ApplianceError as exc:
        return exc.message
    with tempfile.TemporaryDirectory(prefix="appliance-quota-") as tmp:
        try:
            mounts = asyncio.run(WorkspaceMounts.start(bwrap, identity, Path(tmp) / "probe"))
        except QuotaUnavailable as exc:
            return str(exc)
        mounts.close()
    return None


@dataclass
class DoctorProbes:
    python_version: Callable[[], tuple[int, int, int]] = lambda: (
        sys.version_info.major,
        sys.version_info.minor,
        sys.version_info.micro,
    )
    llama: Callable[[], LlamaBuild | str] = probe_llama
    gpus: Callable[[], GpuInfo] = probe_gpus
    env: dict[str, str] = field(default_factory=lambda: dict(os.environ))
    sandboxes: Callable[[str], PreflightReport] = lambda bwrap: run_preflight(bwrap_setting=bwrap)
    cgroup: Callable[[], CgroupInfo] = probe_cgroup
    writable: Callable[[Path], str | None] = probe_writable
    free_bytes: Callable[[Path], int] = probe_free_bytes
    exposed: Callable[[Path], list[str]] = probe_exposed
    port: Callable[[str, int], PortState] = probe_port
    leftovers: Callable[[Path], LeftoverInfo] = probe_leftovers
    valid_tokens: Callable[[Path], int] = probe_valid_tokens
    load_config: Callable[[Path | None, str | None], Config] = lambda path, state: load_config(
        path, state_dir=state
    )
    default_models: Callable[[Config], dict[str, bool | str]] = probe_default_models
    worker_jail: Callable[[Config], str | None] = probe_worker_jail
    workspace_quota: Callable[[Config], str | None] = probe_workspace_quota
    images: Callable[[Path], StoreReport] = lambda state: inspect_store(state / "oci")
