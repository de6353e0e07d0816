"""What a sandbox running in an image sees: the image's root, read-only, and nothing of the host's.

`ImageRoot` is an image ready to run (its merged root filesystem and the config's Env and
WorkingDir). `image_mounts` lays out the sandbox: the root bound read-only at `/`, a fresh
/proc and /dev, the sandbox's own passwd/group/hosts over the image's, a private /tmp and
/dev/shm, /opt/appliance (a tmpfs) for the REPL drivers, and the workspace at /workspace, as for
host runs. The host's /usr and /etc are not there. Config fields, applied:

- Env: each KEY=VALUE is set (over the sandbox defaults; HOME stays /workspace, the only
  writable home);
- WorkingDir: the working directory of `command` runs when it exists in the image (language
  runs start in /workspace, where the code file is);
- Entrypoint/Cmd: a `command` run executes Entrypoint + the request's command, or Entrypoint +
  Cmd when the request gives none;
- User: not applied. Code never runs as root, in an image or not: it runs as the sandbox user
  (uid 1000 inside).

When the daemon is root, the sandbox's first process is the host's setpriv (identity.py), which
an image does not have: it is bound in under /opt/appliance/host with the libraries it links,
and started through the host's dynamic loader there, so nothing of the image is trusted for it.
"""

from __future__ import annotations

import os
import stat
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from appliance.sandbox.errors import SandboxUnavailable
from appliance.sandbox.policy import DRIVER_DIR, WORKSPACE, Mount

HOST_HELPER_DIR = f"{DRIVER_DIR}/host"
MAX_LINK_HOPS = 40


@dataclass(frozen=True)
class ImageRoot:
    name: str
    """The reference the request named (shown in listings and errors)."""
    digest: str
    path: Path
    """The merged root filesystem on the host."""
    env: tuple[tuple[str, str], ...] = ()
    workdir: str = ""
    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()


def parse_env(entries: Sequence[str]) -> tuple[tuple[str, str], ...]:
    out: dict[str, str] = {}
    for item in entries:
        key, sep, value = item.partition("=")
        if sep and key and "\x00" not in item:
            out[key] = value
    out.pop("HOME", None)
    return tuple(out.items())


def resolve_in_root(root: Path, path: str) -> str | None:
    """The host path `path` names inside the image `root`, following links as the sandbox would
    (absolute targets from the image's root, `..` stopping at it); None when it does not exist."""
    pending = [p for p in path.split("/") if p not in ("", ".")]
    parts: list[str] = []
    hops = 0
    while pending:
        part = pending.pop(0)
        if part == "..":
            if parts:
                parts.pop()
            continue
        host = os.path.join(str(root), *parts, part)
        try:
            st = os.lstat(host)
        except (FileNotFoundError, NotADirectoryError):
            return None
        if stat.S_ISLNK(st.st_mode):
            hops += 1
            if hops > MAX_LINK_HOPS:
                return None
            target = os.readlink(host)
            if target.startswith("/"):
                parts = []
            pending = [p for p in target.split("/") if p not in ("", ".")] + pending
            continue
        if pending and not stat.S_ISDIR(st.st_mode):
            return None
        parts.append(part)
    return os.path.join(str(root), *parts)


def find_in_image(root: Path, candidates: Sequence[str], path_dirs: Sequence[str]) -> str | None:
    """The first candidate command that is an executable file in the image, as the sandbox
    names it (a path inside the image), searching `path_dirs` for bare names."""
    for cand in candidates:
        options = [cand] if cand.startswith("/") else [f"{d}/{cand}" for d in path_dirs]
        for option in options:
            host = resolve_in_root(root, option)
            if host is not None and os.path.isfile(host) and os.stat(host).st_mode & 0o111:
                return option
    return None


def image_path_dirs(image: ImageRoot) -> list[str]:
    path = dict(image.env).get("PATH", "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin")
    return [d for d in path.split(":") if d.startswith("/")]


@dataclass(frozen=True)
class HostHelper:
    """A host binary (setpriv) runnable inside an image: its files and how to start it."""

    binds: tuple[tuple[str, str], ...]
    """(host path, path in the sandbox)."""
    argv: tuple[str, ...]

    @classmethod
    def for_binary(cls, binary: str) -> HostHelper:
        try:
            out = subprocess.run(
                ["ldd", binary], capture_output=True, text=True, timeout=10, check=True
            ).stdout
        except (OSError, subprocess.SubprocessError) as exc:
            raise SandboxUnavailable(
                f"cannot list the libraries of {binary} with ldd ({exc}); images need it when "
                "the daemon runs as root: install libc-bin, or run the daemon as an ordinary user"
            ) from exc
        libs: list[str] = []
        loader = ""
        for line in out.splitlines():
            fields = line.split()
            if "=>" in fields and len(fields) >= 3 and fields[2].startswith("/"):
                libs.append(fields[2])
            elif fields and fields[0].startswith("/"):
                loader = fields[0]
        if not loader:  # a static binary runs as it is
            name = f"{HOST_HELPER_DIR}/{os.path.basename(binary)}"
            return cls(((binary, name),), (name,))
        binds = [(os.path.realpath(p), f"{HOST_HELPER_DIR}/{os.path.basename(p)}") for p in libs]
        loader_dest = f"{HOST_HELPER_DIR}/{os.path.basename(loader)}"
        binds.append((os.path.realpath(loader), loader_dest))
        exe = f"{HOST_HELPER_DIR}/{os.path.basename(binary)}"
        binds.append((os.path.realpath(binary), exe))
        return cls(tuple(binds), (loader_dest, "--library-path", HOST_HELPER_DIR, exe))


def image_mounts(
    *,
    image: ImageRoot,
    etc_dir: Path,
    workspace: Path,
    drivers: Sequence[tuple[str, str]],
    helper: HostHelper | None,
    tmp_bytes: int,
    network: bool,
) -> tuple[Mount, ...]:
    """Every mount of a sandbox in an image, in the order bwrap must make them."""
    mounts: list[Mount] = [
        Mount("ro-bind", "/", str(image.path)),
        Mount("proc", "/proc"),
        Mount("dev", "/dev"),
    ]
    for name in ("passwd", "group", "hosts"):
        mounts.append(Mount("ro-bind", f"/etc/{name}", str(etc_dir / name)))
    if network:
        mounts.append(Mount("ro-bind-try", "/etc/resolv.conf", "/etc/resolv.conf"))
    mounts.append(Mount("tmpfs", "/tmp", size_bytes=tmp_bytes, mode=0o1777))
    mounts.append(Mount("tmpfs", "/dev/shm", size_bytes=tmp_bytes, mode=0o1777))
    mounts.append(Mount("tmpfs", DRIVER_DIR, size_bytes=1024 * 1024, mode=0o755))
    for host_path, dest in drivers:
        mounts.append(Mount("ro-bind", dest, host_path))
    if helper is not None:
        mounts.append(Mount("dir", HOST_HELPER_DIR, mode=0o755))
        for host_path, dest in helper.binds:
            mounts.append(Mount("ro-bind", dest, host_path))
    mounts.append(Mount("bind", WORKSPACE, str(workspace)))
    return tuple(mounts)


def image_env(
    image: ImageRoot, extra: Sequence[tuple[str, str]] = ()
) -> tuple[tuple[str, str], ...]:
    env = {
        "PATH": "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin",
        "HOME": WORKSPACE,
        "USER": "sandbox",
        "LOGNAME": "sandbox",
        "TMPDIR": "/tmp",
        "LANG": "C.UTF-8",
        "TERM": "dumb",
    }
    env.update(dict(image.env))
    env.update(dict(extra))
    return tuple(env.items())


def image_cwd(image: ImageRoot) -> str:
    """WorkingDir when it is a directory of the image, else the workspace."""
    if image.workdir.startswith("/"):
        host = resolve_in_root(image.path, image.workdir)
        if host is not None and os.path.isdir(host):
            return image.workdir
    return WORKSPACE
