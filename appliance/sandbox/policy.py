"""What a sandbox may see and do, and the bwrap command line that enforces it.

A `SandboxPolicy` is plain data: the mounts of the new root (read-only toolchains, the writable
workspace, tmpfs), the environment, whether the network is shared, the uid inside, and the
command. `bwrap_args` turns it into bwrap arguments and is a pure function, so unit tests read
exactly what the kernel will be asked for.

Isolation every policy gets: new user, pid, ipc, uts, cgroup and (unless `network`) net
namespaces; a fresh /proc and minimal /dev; only the listed mounts visible; the environment
cleared; `--die-with-parent`, `--new-session` (no terminal injection), and `--as-pid-1` so the
program is the sandbox's init: when it ends, or is killed, the kernel kills every process left in
the sandbox, setsid'd and double-forked ones included. bwrap always sets PR_SET_NO_NEW_PRIVS.
With `seccomp`, the program also runs under the syscall filter of seccomp.py (`--seccomp FD`).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

MountKind = Literal["ro-bind", "ro-bind-try", "bind", "tmpfs", "dir", "symlink", "proc", "dev"]

WORKSPACE = "/workspace"
"""Where the sandbox sees its workspace; also its home and working directory."""
DRIVER_DIR = "/opt/appliance"
"""Where the REPL drivers are bound inside the sandbox."""


@dataclass(frozen=True)
class Mount:
    kind: MountKind
    dest: str
    source: str = ""
    size_bytes: int | None = None
    """tmpfs only: its size cap."""
    mode: int | None = None
    """dir/tmpfs only: permissions."""


@dataclass(frozen=True)
class SandboxPolicy:
    command: tuple[str, ...]
    mounts: tuple[Mount, ...]
    env: tuple[tuple[str, str], ...] = ()
    network: bool = False
    hostname: str = "sandbox"
    cwd: str = WORKSPACE
    uid: int = 1000
    gid: int = 1000
    keep_caps: tuple[str, ...] = ()
    """Capabilities (inside the sandbox's user namespace) the first process keeps. Only used when
    the daemon is root: the first process is setpriv, which needs CAP_SETUID/CAP_SETGID to become
    the unprivileged sandbox user, after which no capability is left."""
    drop_all_caps: bool = False
    """Pass --cap-drop ALL first (needed when bwrap runs as root, which otherwise keeps caps)."""
    seccomp: bool = False
    """Run the program under the syscall filter of seccomp.py (the fd is given to bwrap_args)."""
    extra: tuple[str, ...] = field(default=())
    """Further raw bwrap arguments (kept for the rare profile that needs one)."""


def _ancestors(path: str) -> list[str]:
    parts = [p for p in path.split("/") if p]
    return ["/" + "/".join(parts[:i]) for i in range(1, len(parts))]


def _covered(path: str, made: Iterable[str], bound: Iterable[str]) -> bool:
    """Whether `path` already exists in the new root: made itself, or inside a bound host tree."""
    return path in made or any(path.startswith(b.rstrip("/") + "/") for b in bound)


def bwrap_args(
    policy: SandboxPolicy,
    *,
    info_fd: int | None = None,
    userns_block_fd: int | None = None,
    seccomp_fd: int | None = None,
) -> list[str]:
    """The bwrap arguments (without the bwrap path itself) that enforce `policy`.

    Parent directories of mount points that no earlier mount provides are created explicitly with
    mode 0755: bwrap would otherwise copy the host's modes, and a 0700 /root would hide a
    toolchain bound below it from the unprivileged sandbox user.
    """
    args: list[str] = ["--unshare-all", "--unshare-user"]
    if policy.network:
        args.append("--share-net")
    args += ["--die-with-parent", "--new-session", "--as-pid-1", "--hostname", policy.hostname]
    args += ["--uid", str(policy.uid), "--gid", str(policy.gid)]
    if policy.drop_all_caps:
        args += ["--cap-drop", "ALL"]
    for cap in policy.keep_caps:
        args += ["--cap-add", cap]
    if info_fd is not None:
        args += ["--info-fd", str(info_fd)]
    if userns_block_fd is not None:
        args += ["--userns-block-fd", str(userns_block_fd)]
    if policy.seccomp:
        if seccomp_fd is None:
            raise ValueError("the policy asks for the seccomp filter but no fd carries it")
        args += ["--seccomp", str(seccomp_fd)]
    args.append("--clearenv")
    for key, value in policy.env:
        args += ["--setenv", key, value]

    made: set[str] = {"/"}  # paths that exist in the new root so far
    bound: list[str] = []  # host trees bound in, whose subdirectories exist too
    for m in policy.mounts:
        if m.kind != "symlink":
            for parent in _ancestors(m.dest):
                if not _covered(parent, made, bound):
                    args += ["--perms", "0755", "--dir", parent]
                    made.add(parent)
        if m.kind in ("ro-bind", "ro-bind-try", "bind"):
            args += [f"--{m.kind}", m.source, m.dest]
        elif m.kind == "tmpfs":
            if m.mode is not None:
                args += ["--perms", f"{m.mode:04o}"]
            if m.size_bytes is not None:
                args += ["--size", str(m.size_bytes)]
            args += ["--tmpfs", m.dest]
        elif m.kind == "dir":
            if m.mode is not None:
                args += ["--perms", f"{m.mode:04o}"]
            args += ["--dir", m.dest]
        elif m.kind == "symlink":
            args += ["--symlink", m.source, m.dest]
        elif m.kind == "proc":
            args += ["--proc", m.dest]
        elif m.kind == "dev":
            args += ["--dev", m.dest]
        made.add(m.dest)
        if m.kind in ("ro-bind", "ro-bind-try", "bind"):
            bound.append(m.dest)

    # bwrap's new root is a tmpfs that an unprivileged daemon's sandbox user owns: read-only, or
    # code could write there, outside every quota (only /workspace, /tmp and /dev/shm are for it)
    args += ["--remount-ro", "/"]
    args += ["--chdir", policy.cwd, *policy.extra, "--", *policy.command]
    return args


# --- the host file system a sandbox sees ---------------------------------------------------

SYSTEM_TREES = ("/usr",)
"""Host trees bound read-only into every sandbox: the system's programs and libraries."""
USR_ALIASES = ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
"""Top-level directories that merged-/usr systems make symlinks into /usr."""
ETC_FILES = (
    "/etc/ld.so.cache",
    "/etc/ld.so.conf",
    "/etc/ld.so.conf.d",
    "/etc/alternatives",
    "/etc/localtime",
)
"""Host /etc entries the dynamic linker and `alternatives` symlinks need; nothing else of /etc."""
NETWORK_ETC_FILES = (
    "/etc/resolv.conf",
    "/etc/nsswitch.conf",
    "/etc/gai.conf",
    "/etc/ssl",
    "/etc/ca-certificates",
    "/etc/pki",
)
"""Extra /etc entries for sandboxes that were granted the network (name resolution, TLS roots)."""


def system_mounts(host_root: Path = Path("/")) -> tuple[Mount, ...]:
    """The read-only system part of every sandbox, adapted to this host's /usr layout."""
    out: list[Mount] = [
        Mount("ro-bind", t, str(host_root) + t if str(host_root) != "/" else t)
        for t in SYSTEM_TREES
    ]
    for alias in USR_ALIASES:
        host = host_root / alias.lstrip("/")
        if host.is_symlink():
            out.append(Mount("symlink", alias, os.readlink(host)))
        elif host.is_dir():
            out.append(Mount("ro-bind", alias, str(host)))
    return tuple(out)


def base_mounts(
    *,
    system: Sequence[Mount],
    etc_dir: Path,
    workspace: Path,
    toolchain_roots: Sequence[str],
    extra_ro: Sequence[str],
    drivers: Sequence[tuple[str, str]],
    tmp_bytes: int,
    network: bool,
) -> tuple[Mount, ...]:
    """Every mount of a sandbox, in the order bwrap must make them."""
    mounts: list[Mount] = [Mount("proc", "/proc"), Mount("dev", "/dev"), *system]
    for name in ("passwd", "group", "hosts"):
        mounts.append(Mount("ro-bind", f"/etc/{name}", str(etc_dir / name)))
    for path in (*ETC_FILES, *(NETWORK_ETC_FILES if network else ())):
        mounts.append(Mount("ro-bind-try", path, path))
    # the private /tmp (and /dev/shm, where POSIX shared memory and semaphores live) before the
    # host paths: a toolchain or a server's files under /tmp (a checkout in /tmp, say) are then
    # bound on top of it, where a tmpfs made after them would hide them
    mounts.append(Mount("tmpfs", "/tmp", size_bytes=tmp_bytes, mode=0o1777))
    mounts.append(Mount("tmpfs", "/dev/shm", size_bytes=tmp_bytes, mode=0o1777))
    for root in sorted(set(toolchain_roots)):
        mounts.append(Mount("ro-bind", root, root))
    for path in extra_ro:
        mounts.append(Mount("ro-bind-try", path, path))
    for host_path, dest in drivers:
        mounts.append(Mount("ro-bind", dest, host_path))
    mounts.append(Mount("bind", WORKSPACE, str(workspace)))
    return tuple(mounts)


def sandbox_env(
    path_dirs: Sequence[str], extra: Sequence[tuple[str, str]] = ()
) -> tuple[tuple[str, str], ...]:
    """The whole environment of a sandbox: nothing from the daemon, only these."""
    path = ":".join(dict.fromkeys([*path_dirs, "/usr/local/bin", "/usr/bin", "/bin"]))
    env = {
        "PATH": path,
        "HOME": WORKSPACE,
        "USER": "sandbox",
        "LOGNAME": "sandbox",
        "TMPDIR": "/tmp",
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "TERM": "dumb",
    }
    env.update(dict(extra))
    return tuple(env.items())


ETC_PASSWD = (
    "root:x:0:0:root:/nonexistent:/usr/sbin/nologin\n"
    "sandbox:x:1000:1000:sandbox:/workspace:/bin/sh\n"
    "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"
)
ETC_GROUP = "root:x:0:\nsandbox:x:1000:\nnogroup:x:65534:\n"
ETC_HOSTS = "127.0.0.1\tlocalhost sandbox\n::1\tlocalhost ip6-localhost ip6-loopback\n"


def write_sandbox_etc(etc_dir: Path) -> Path:
    """The sandbox's own /etc/passwd, group and hosts (the host's are never shown)."""
    etc_dir.mkdir(parents=True, exist_ok=True)
    for name, text in (("passwd", ETC_PASSWD), ("group", ETC_GROUP), ("hosts", ETC_HOSTS)):
        target = etc_dir / name
        if not target.is_file() or target.read_text() != text:
            tmp = target.with_suffix(".tmp")
            tmp.write_text(text)
            tmp.chmod(0o644)
            tmp.replace(target)
    etc_dir.chmod(0o755)
    return etc_dir
