"""The bwrap jail of model workers and the grammar prover: no network, read-only, private /tmp.

A model worker parses GGUF files and grammars with llama.cpp, which is C++ fed by files and
schemas that may come from anyone; the design asks that such parsing happen in a jail. This one
is what a worker needs and nothing more:

- new user, pid, ipc, uts, cgroup and network namespaces (`--unshare-all`): no route to the
  daemon's port or anywhere else, no view of other processes; `--die-with-parent`,
  `--new-session`, `--cap-drop ALL`. bwrap's reaper is the namespace's pid 1 and the worker its
  child, so signals and llama.cpp's abort() behave as for any process (a pid 1 ignores signals it
  has no handler for); the daemon learns the worker's host pid through --info-fd and uses it for
  memory figures and signals;
- read-only: /usr (and its merged-/usr aliases), the few /etc files the dynamic linker reads, the
  Python environment (sys.prefix, sys.base_prefix, every sys.path entry but the working
  directory, the appliance package itself), every model directory (the state dir's models/,
  models.scan_dirs, models.profile_dirs, the config directory's models/) and each model file a
  profile names outside them (and where its symlinks lead);
- writable: the KV directory only (workers write parked session state there themselves);
- a private /tmp capped at 64 MiB; a fresh /proc and a minimal /dev;
- on an NVIDIA host: the /dev/nvidia* device nodes (and /dev/nvidia-caps), /proc/driver/nvidia
  and a read-only /sys, which the CUDA driver reads to find its devices.

The environment is passed as the daemon's (less API tokens, already dropped by the spawner): the
command line of bwrap is readable by every local user, so variables are not spelled out there.

The spare worker is started before anyone knows which model it will load, so every model
directory is bound up front, and model files outside them are those the catalog knows at spawn
time. Registration (`POST /api/models`) only accepts files inside the model directories, so a
new model is visible to a running spare; when it is not (a profile pointing elsewhere), the
scheduler sees it through `JailedCommand.sees` and starts a fresh worker instead.

`probe` runs a jailed `python -c "import llama_cpp"` once; where bwrap or user namespaces are
unusable, workers run unjailed with a warning, and `appliance doctor` says why and how to fix it.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import logging
import os
import subprocess
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from appliance.config import Config
from appliance.errors import ApplianceError
from appliance.models.catalog import ModelCatalog
from appliance.models.jail import JailedCommand
from appliance.models.registration import model_directories
from appliance.sandbox.bwrap import locate_bwrap
from appliance.sandbox.policy import ETC_FILES, system_mounts

log = logging.getLogger("appliance.jail")

TMP_BYTES = 64 * 2**20
"""Size of a jailed worker's private /tmp (llama.cpp writes nothing there; Python may)."""


def _real(path: str | Path) -> str:
    return os.path.realpath(os.path.abspath(os.path.expanduser(str(path))))


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def python_paths(state_dir: Path) -> list[str]:
    """What the worker's interpreter must read: its prefixes, its sys.path, the appliance package.

    The working directory (sys.path's first entry for `python -m`) is left out, and so is any
    entry that holds the state directory: the worker must not read the database."""
    import appliance

    state = _real(state_dir)
    cwd = _real(os.getcwd())
    candidates = [
        sys.prefix,
        sys.base_prefix,
        sys.exec_prefix,
        os.path.dirname(_real(sys.executable)),
    ]
    candidates += [p for p in sys.path if p and _real(p) != cwd]
    candidates.append(str(Path(appliance.__file__).resolve().parent))
    out = []
    for c in candidates:
        real = _real(c)
        if not os.path.exists(real) or real == "/":
            continue
        if _inside(state, real):
            log.warning(
                "worker jail: %s holds the state directory; it is not shown to model workers", real
            )
            continue
        out.append(c)
    return out


def gpu_mounts(dev: str = "/dev") -> list[str]:
    """bwrap arguments that let CUDA find the NVIDIA devices, when this host has them (`dev` is
    where to look, for tests)."""
    nodes = sorted(p for p in glob.glob(os.path.join(dev, "nvidia*")) if os.path.exists(p))
    if not nodes:
        return []
    args: list[str] = []
    for node in nodes:  # nvidia0.., nvidiactl, nvidia-uvm(-tools), nvidia-modeset, nvidia-caps/
        args += ["--dev-bind", node, "/dev/" + os.path.basename(node)]
    args += [
        "--ro-bind",
        "/sys",
        "/sys",
        "--ro-bind-try",
        "/proc/driver/nvidia",
        "/proc/driver/nvidia",
    ]
    return args


class WorkerJail:
    """Builds the bwrap command line of a jailed model worker or grammar prover."""

    def __init__(
        self,
        bwrap: Path,
        *,
        state_dir: Path,
        kv_dir: Path,
        model_dirs: Sequence[Path],
        model_files: Callable[[], Iterable[Path]] = list,
        gpu: Callable[[], list[str]] = gpu_mounts,
        python: str | None = None,
    ) -> None:
        self.bwrap = bwrap
        self.kv_dir = kv_dir
        self.model_dirs = list(model_dirs)
        self.model_files = model_files
        self.gpu = gpu
        self.python = python or sys.executable
        self.env_paths = python_paths(state_dir)
        self._problem: str | bool | None = False  # False: not probed yet

    def _binds(self, paths: Iterable[str | Path], kind: str) -> tuple[list[str], list[str]]:
        """bwrap args binding each existing path at itself, parents before children, no repeats."""
        seen: list[str] = []
        args: list[str] = []
        for p in sorted(
            {os.path.abspath(os.path.expanduser(str(p))) for p in paths},
            key=lambda s: (s.count("/"), s),
        ):
            if not os.path.exists(p) or any(_inside(p, s) for s in seen):
                continue
            seen.append(p)
            args += [kind, p, p]
        return args, seen

    def command(self, argv: Sequence[str], *, models: bool) -> JailedCommand:
        info_r, info_w = os.pipe()
        os.set_inheritable(info_w, True)
        args = [
            str(self.bwrap),
            "--unshare-all",
            "--unshare-user",
            "--die-with-parent",
            "--new-session",
            "--cap-drop",
            "ALL",
            "--hostname",
            "appliance-worker",
            "--info-fd",
            str(info_w),
            "--proc",
            "/proc",
            "--dev",
            "/dev",
        ]
        for m in system_mounts():
            args += [f"--{m.kind}", m.source, m.dest]
        for path in ETC_FILES:
            args += ["--ro-bind-try", path, path]
        args += ["--perms", "1777", "--size", str(TMP_BYTES), "--tmpfs", "/tmp"]
        ro = list(self.env_paths)
        rw: list[str] = []
        if models:
            ro += [str(d) for d in self.model_dirs]
            for f in self.model_files():
                ro += [str(f), _real(f)]
            rw.append(str(self.kv_dir))
        ro_args, ro_seen = self._binds(ro, "--ro-bind")
        # the KV directory stays writable even inside a read-only model directory: bound last
        rw_args, rw_seen = self._binds(rw, "--bind")
        args += ro_args + rw_args
        if models:
            args += self.gpu()
        args += ["--chdir", "/", "--", *argv]
        return JailedCommand(
            argv=args, pass_fds=(info_w,), info_fd=info_r, readable=tuple(ro_seen + rw_seen)
        )

    def probe(self) -> str | None:
        """None when a jailed Python can import llama_cpp here, else what went wrong.

        It runs in a worker's jail (model directories, KV directory, GPU nodes), whose binds are a
        superset of the grammar prover's: a bind this host refuses shows here, not at a spawn."""
        jailed = self.command([self.python, "-c", "import llama_cpp"], models=True)
        try:
            out = subprocess.run(
                jailed.argv, capture_output=True, text=True, timeout=60, pass_fds=jailed.pass_fds
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            return str(exc)
        finally:
            jailed.close_child_fds()
            jailed.discard()
        if out.returncode == 0:
            return None
        lines = [ln for ln in out.stderr.strip().splitlines() if ln.strip()]
        return (lines[-1] if lines else f"exit status {out.returncode}")[:300]

    async def unusable(self) -> str | None:
        """The probe's verdict, run once (off the event loop); logged when the jail is unusable."""
        if self._problem is False:
            problem = await asyncio.to_thread(self.probe)
            if problem is not None:
                log.warning(
                    "model workers run unjailed: bwrap cannot jail them here (%s). "
                    "Run `appliance doctor` for the fix",
                    problem,
                )
            self._problem = problem
        return self._problem if isinstance(self._problem, str) else None


def worker_jail_for(config: Config, catalog: ModelCatalog) -> WorkerJail | None:
    """The jail of this daemon's workers, or None (logged) when it is switched off or bwrap is missing."""
    if not config.models.jail_workers:
        log.warning(
            "models.jail_workers is off: model workers and the grammar checker run unjailed"
        )
        return None
    try:
        bwrap = locate_bwrap(config.sandbox.bwrap)
    except ApplianceError as exc:
        log.warning("model workers run unjailed: %s", exc.message)
        return None
    state = Path(config.state_dir)

    def model_files() -> list[Path]:
        out = []
        for prof in catalog.all():
            with contextlib.suppress(ApplianceError, OSError):
                path = catalog.local_path(prof.id)
                if path is not None:
                    out.append(path)
        return out

    return WorkerJail(
        bwrap,
        state_dir=state,
        kv_dir=state / "kv",
        model_dirs=model_directories(config),
        model_files=model_files,
    )
