"""`appliance doctor`: is this box ready to run the appliance, and if not, what to do.

Each check looks at one thing (Python, the llama.cpp build, the NVIDIA driver, the GPU as
llama.cpp sees it, sandboxes, workspace quotas, the model workers' jail, cgroup delegation, the
state directory, the image store, processes an earlier daemon left running, the port, API
tokens, the config, the default models) and returns ok, warning (it works, but not as well as it could) or
failure (that part will not work), with a sentence saying what it found and, unless ok, the fix.
Everything read from the host comes through `DoctorProbes` (appliance.host.probes).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from appliance.access import is_loopback
from appliance.config import Config, default_config_path, resolve_state_dir
from appliance.errors import ApplianceError, ConfigError
from appliance.host.probes import DoctorProbes, GpuInfo, LlamaBuild

Status = Literal["ok", "warning", "failure"]
GiB = 2**30
DISK_FAIL_BYTES = 1 * GiB
DISK_WARN_BYTES = 5 * GiB
REINSTALL = "bash packaging/install.sh (from the appliance's source directory)"


@dataclass(frozen=True)
class CheckResult:
    name: str
    status: Status
    detail: str
    fix: str = ""

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


def ok(name: str, detail: str) -> CheckResult:
    return CheckResult(name, "ok", detail)


def check_python(p: DoctorProbes) -> CheckResult:
    v = p.python_version()
    text = ".".join(map(str, v))
    if v[:2] >= (3, 11):
        return ok("python", f"Python {text}")
    return CheckResult(
        "python",
        "failure",
        f"Python {text} is too old; the appliance needs 3.11+",
        "install Python 3.11 or newer and reinstall: PYTHON=python3.11 " + REINSTALL,
    )


def check_llama(p: DoctorProbes, llama: LlamaBuild | str, gpus: GpuInfo) -> CheckResult:
    if isinstance(llama, str):
        return CheckResult(
            "llama-cpp-python", "failure", f"llama_cpp cannot be imported ({llama})", REINSTALL
        )
    build = "CUDA" if llama.cuda else "CPU"
    detail = f"llama-cpp-python {llama.version}, {build} build"
    if gpus.names and not llama.cuda:
        return CheckResult(
            "llama-cpp-python",
            "warning",
            detail + ", but this box has an NVIDIA GPU: models run on the CPU",
            "rebuild with CUDA (needs nvcc from the CUDA toolkit): APPLIANCE_CUDA=1 " + REINSTALL,
        )
    return ok("llama-cpp-python", detail)


def check_driver(p: DoctorProbes, gpus: GpuInfo) -> CheckResult:
    if gpus.names:
        return ok(
            "nvidia driver",
            f"driver {gpus.driver or '?'}, {len(gpus.names)} GPU(s): {', '.join(gpus.names)}",
        )
    return CheckResult(
        "nvidia driver",
        "warning",
        f"{gpus.why_none or 'no NVIDIA GPU found'}; models run on the CPU",
        "if this box has an NVIDIA GPU, install its driver (Ubuntu: `sudo ubuntu-drivers install`; "
        "then reboot) and check `nvidia-smi`",
    )


def check_gpu_visible(p: DoctorProbes, llama: LlamaBuild | str, gpus: GpuInfo) -> CheckResult:
    name = "gpu for llama.cpp"
    if not gpus.names:
        return ok(name, "no NVIDIA GPU on this box; llama.cpp uses the CPU")
    if isinstance(llama, str) or not llama.cuda:
        return CheckResult(
            name,
            "failure",
            "llama.cpp was built without CUDA, so it cannot use the GPU",
            "APPLIANCE_CUDA=1 " + REINSTALL,
        )
    visible = p.env.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1", "none", "NoDevFiles"):
        return CheckResult(
            name,
            "failure",
            f"CUDA_VISIBLE_DEVICES={visible!r} hides every GPU",
            "unset CUDA_VISIBLE_DEVICES (or list the GPUs to use) in the "
            "environment of `appliance serve`",
        )
    if not llama.gpu_offload:
        return CheckResult(
            name,
            "failure",
            "llama.cpp (CUDA build) sees no GPU device",
            "check that the driver supports the CUDA version llama.cpp was built "
            "with (`nvidia-smi` shows it) and that /dev/nvidia* are readable by "
            "this user",
        )
    return ok(name, "llama.cpp can offload layers to the GPU")


def check_sandboxes(p: DoctorProbes, cfg: Config) -> CheckResult:
    report = p.sandboxes(cfg.sandbox.bwrap)
    if report.ok:
        return ok("sandboxes", "; ".join(c.detail for c in report.checks))
    bad = report.problems()
    return CheckResult(
        "sandboxes",
        "failure",
        " ".join(c.detail for c in bad),
        " ".join(c.fix for c in bad if c.fix),
    )


def check_worker_jail(p: DoctorProbes, cfg: Config) -> CheckResult:
    name = "model worker jail"
    if not cfg.models.jail_workers:
        return CheckResult(
            name,
            "warning",
            "models.jail_workers is false: model workers parse GGUF files and "
            "grammars with the daemon's rights and network",
            "set `jail_workers = true` under [models] in the config (the default)",
        )
    problem = p.worker_jail(cfg)
    if problem is None:
        return ok(
            name,
            "model workers and the grammar checker run in a bwrap jail (no network, model files "
            "and Python read-only)",
        )
    return CheckResult(
        name,
        "warning",
        f"bwrap cannot jail model workers here ({problem}); they run unjailed",
        "the fix of the sandboxes check applies (bwrap and user namespaces); if sandboxes work, "
        "report this message",
    )


def check_workspace_quota(p: DoctorProbes, cfg: Config) -> CheckResult:
    name = "workspace quotas"
    why = p.workspace_quota(cfg)
    if why is None:
        return ok(
            name,
            "each workspace is a tmpfs of its own size: a write past workspace_mb "
            "fails with ENOSPC, and workspaces never use the state directory's disk",
        )
    return CheckResult(
        name,
        "warning",
        f"workspace sizes are polled, not enforced by the kernel ({why}): a fast "
        "writer can pass workspace_mb between two polls, on the state directory's "
        "disk",
        "make sandboxes work first (the check above), install util-linux for "
        'nsenter, and leave sandbox.workspace_quota at "auto"',
    )


def check_cgroup(p: DoctorProbes) -> CheckResult:
    name = "cgroup delegation"
    info = p.cgroup()
    hint = (
        "run under the shipped systemd unit (it sets Delegate=yes), or from a shell: "
        "`systemd-run --user --scope -p Delegate=yes appliance serve`"
    )
    if info.version != 2:
        return CheckResult(
            name,
            "warning",
            "no cgroup v2 (unified hierarchy): sandboxes are limited by rlimits only",
            "boot with systemd.unified_cgroup_hierarchy=1 (the default on current distributions)",
        )
    missing = [c for c in ("memory", "pids") if c not in info.controllers]
    if missing or not info.writable:
        why = (
            f"controllers {', '.join(missing)} are not delegated"
            if missing
            else "the cgroup is not writable by this user"
        )
        return CheckResult(
            name,
            "warning",
            f"{info.path}: {why}; sandboxes fall back to rlimits (no exact memory "
            "limit or OOM report)",
            hint,
        )
    return ok(name, f"{info.path} is delegated (memory, pids): per-sandbox cgroup limits")


def check_state_dir(p: DoctorProbes, cfg: Config) -> CheckResult:
    path = Path(cfg.state_dir)
    name = "state directory"
    err = p.writable(path)
    if err:
        return CheckResult(
            name,
            "failure",
            f"{path} is not writable: {err}",
            f"give this user the directory (`sudo chown -R $USER {path}`) or choose "
            "another with --state-dir / state_dir in the config",
        )
    free = p.free_bytes(path)
    detail = f"{path} is writable, {free / GiB:.1f} GiB free"
    if free < DISK_FAIL_BYTES:
        return CheckResult(
            name,
            "failure",
            detail + "; too little for models and KV state",
            "free disk space or move state_dir to a larger disk",
        )
    exposed = p.exposed(path)
    if exposed:
        return CheckResult(
            name,
            "warning",
            f"other users can read {', '.join(exposed)}: every transcript, parked KV "
            "cache and workspace is in there",
            f"chmod 700 {path} && chmod 600 {path}/appliance.db*  (`appliance serve` "
            "also tightens them when it starts)",
        )
    if free < DISK_WARN_BYTES:
        return CheckResult(
            name,
            "warning",
            detail + "; larger models will not fit",
            "free disk space or move state_dir to a larger disk",
        )
    return ok(name, detail)


def check_images(p: DoctorProbes, cfg: Config) -> CheckResult:
    name = "image store"
    report = p.images(Path(cfg.state_dir))
    detail = f"{report.images} image(s), {report.bytes / GiB:.2f} GiB in {cfg.state_dir}/oci"
    if report.problems:
        return CheckResult(
            name,
            "warning",
            f"{detail}; cannot run: {'; '.join(report.problems)}",
            "remove and pull (or import) those images again: appliance images rm REF, then "
            "appliance images pull REF",
        )
    return ok(name, detail)


def check_leftovers(p: DoctorProbes, cfg: Config) -> CheckResult:
    name = "leftover processes"
    info = p.leftovers(Path(cfg.state_dir))
    if info.daemon_pid is not None:
        return ok(
            name,
            f"a daemon (pid {info.daemon_pid or '?'}) is using {cfg.state_dir}; "
            "the sandboxes and workers running are its own",
        )
    if not info.processes:
        return ok(name, f"no sandbox or model worker of {cfg.state_dir} is running")
    shown = "; ".join(info.processes[:5]) + ("; ..." if len(info.processes) > 5 else "")
    pids = " ".join(d.split()[1] for d in info.processes)
    return CheckResult(
        name,
        "warning",
        f"{len(info.processes)} process(es) of {cfg.state_dir} outlived their daemon: {shown}",
        f"start the daemon (it ends them when it starts), or end them: kill -9 {pids}",
    )


def check_port(p: DoctorProbes, cfg: Config) -> CheckResult:
    host, port = cfg.server.host, cfg.server.port
    state = p.port(host, port)
    if state == "free":
        return ok("port", f"{host}:{port} is free")
    if state == "appliance":
        return ok("port", f"an appliance is already serving on {host}:{port}")
    return CheckResult(
        "port",
        "failure",
        f"{host}:{port} is in use by another program",
        "stop that program, or set another port: `appliance serve --port N` or "
        "[server] port = N in the config",
    )


def check_tokens(p: DoctorProbes, cfg: Config) -> CheckResult:
    host = cfg.server.host
    n = p.valid_tokens(Path(cfg.state_dir))
    if is_loopback(host):
        need = "every request needs one" if n else "the API is open to local users"
        return ok("api tokens", f"{host} is loopback; {n} valid token(s), {need}")
    if n:
        return ok(
            "api tokens", f"{host} is reachable from the network; {n} valid token(s) guard it"
        )
    return CheckResult(
        "api tokens",
        "failure",
        f"{host} is not a loopback address and there are no API tokens: the "
        "daemon refuses to start",
        "`appliance token create NAME`, or bind 127.0.0.1",
    )


def check_default_models(p: DoctorProbes, cfg: Config) -> CheckResult:
    name = "default models"
    if not cfg.models.defaults:
        return ok(name, "none configured (models.defaults is empty)")
    try:
        found = p.default_models(cfg)
    except ApplianceError as exc:
        return CheckResult(
            name,
            "failure",
            f"model profiles cannot be read: {exc.message}",
            "fix the profile named in the message",
        )
    unknown = {m: why for m, why in found.items() if isinstance(why, str)}
    missing = [m for m, there in found.items() if there is False]
    if unknown:
        return CheckResult(
            name,
            "failure",
            "; ".join(f"{m}: {why}" for m, why in unknown.items()),
            "fix models.defaults in the config, or add the missing profiles",
        )
    if missing:
        return CheckResult(
            name,
            "warning",
            f"not fetched yet: {', '.join(missing)}",
            "`appliance models fetch` (needs the network once; `appliance serve` "
            "also fetches them at start unless --no-fetch)",
        )
    return ok(name, f"present: {', '.join(found)}")


def run_doctor(
    config_path: Path | None = None,
    state_dir: str | None = None,
    probes: DoctorProbes | None = None,
) -> list[CheckResult]:
    """Every check, in the order a person fixes things."""
    p = probes or DoctorProbes()
    results = [check_python(p)]
    try:
        cfg = p.load_config(config_path, state_dir)
        where = config_path or default_config_path()
        said = f"{where} is valid" if where else "no config file: the defaults apply"
        config_check = ok("config", f"{said} (state {cfg.state_dir})")
    except ConfigError as exc:
        config_check = CheckResult(
            "config", "failure", exc.message, "fix the key named above (see README: configuration)"
        )
        cfg = Config(state_dir=str(resolve_state_dir(state_dir or "")))
    llama, gpus = p.llama(), p.gpus()
    results += [
        check_llama(p, llama, gpus),
        check_driver(p, gpus),
        check_gpu_visible(p, llama, gpus),
        check_sandboxes(p, cfg),
        check_workspace_quota(p, cfg),
        check_worker_jail(p, cfg),
        check_cgroup(p),
        check_state_dir(p, cfg),
        check_images(p, cfg),
        check_leftovers(p, cfg),
        check_port(p, cfg),
        check_tokens(p, cfg),
        config_check,
        check_default_models(p, cfg),
    ]
    return results
