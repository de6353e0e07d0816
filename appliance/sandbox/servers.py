"""Long-running programs in a sandbox that talk over stdin/stdout (an agent's stdio MCP servers).

Such a program gets the policy every sandbox gets (appliance.sandbox.policy: new namespaces, the
read-only system, a private workspace, the syscall filter, resource limits, no network unless
asked), plus the host paths it names, read-only at the same place: its command (resolved on the
daemon's PATH, with the file a symlink points to) and the files it says it needs (a script, a
virtual environment). Nothing else of the host is visible.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from appliance.sandbox.engine import SandboxEngine
from appliance.sandbox.errors import SandboxUnavailable
from appliance.sandbox.limits import DEFAULT_LIMITS, MiB, SandboxLimits, rlimits_for
from appliance.sandbox.policy import SandboxPolicy, base_mounts, sandbox_env
from appliance.sandbox.process import SandboxProcess
from appliance.sandbox.workspace import Workspace

SERVER_LIMITS = replace(
    DEFAULT_LIMITS, timeout_s=3600.0, cpu_s=3600.0, memory_mb=1024, address_space_extra_mb=1024
)
"""A server lives as long as its session: an hour of CPU, more memory than a snippet."""


def resolve_command(command: str) -> str:
    """The absolute path of `command` (a name is looked up on the daemon's PATH)."""
    found = command if command.startswith("/") else shutil.which(command)
    if not found or not os.access(found, os.X_OK):
        raise SandboxUnavailable(f"command {command!r} is not an executable file on this host")
    return found


HIDDEN_TREES = ("/etc", "/proc", "/sys", "/dev", "/run", "/boot", "/var/run")
"""Host trees a server is never shown, whatever a symlink in its paths points to."""


def visible_paths(command: str, paths: Sequence[str], private: Sequence[str] = ()) -> list[str]:
    """The host paths a server sees: its command (and what a symlink points to) and `paths`.

    bwrap follows symlinks when it binds, so each path is judged by where it really leads; none
    may lead into a hidden tree, or into or above a `private` one (the appliance's state)."""
    for p in paths:
        real = os.path.realpath(p)
        hidden = [*HIDDEN_TREES, *map(os.path.realpath, private)]
        above = any(d.startswith(real.rstrip("/") + "/") for d in map(os.path.realpath, private))
        if real == "/" or above or any(real == t or real.startswith(t + "/") for t in hidden):
            raise SandboxUnavailable(
                f"path {p!r} leads to {real}, which no MCP server is shown; name its own files"
            )
    out = [command, os.path.realpath(command), *paths]
    return list(dict.fromkeys(os.path.normpath(p) for p in out))


@dataclass
class ServerProcess:
    process: SandboxProcess
    workspace: Workspace

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.process.close()
        await asyncio.to_thread(self.workspace.destroy)


async def spawn_server(
    engine: SandboxEngine,
    command: str,
    args: Sequence[str],
    *,
    env: Mapping[str, str],
    paths: Sequence[str],
    network: bool = False,
    limits: SandboxLimits = SERVER_LIMITS,
) -> ServerProcess:
    """Start `command args` in a fresh sandbox with pipes on stdin, stdout and stderr."""
    resolved = resolve_command(command)
    workspace = await asyncio.to_thread(engine.new_workspace, "sbx-mcp-", limits)
    mounts = base_mounts(
        system=engine.system,
        etc_dir=engine.etc_dir,
        workspace=workspace.bind_source,
        toolchain_roots=[],
        extra_ro=visible_paths(resolved, paths, private=[str(engine.root.parent)]),
        drivers=[],
        tmp_bytes=limits.tmp_mb * MiB,
        network=network,
    )
    policy = SandboxPolicy(
        command=(*engine.identity.command_prefix(), resolved, *args),
        mounts=mounts,
        env=sandbox_env([str(Path(resolved).parent)], tuple(env.items())),
        network=network,
        uid=engine.identity.bwrap_uid,
        gid=engine.identity.bwrap_gid,
        keep_caps=engine.identity.keep_caps,
        drop_all_caps=engine.identity.daemon_is_root,
        seccomp=engine.seccomp,
    )
    cgroup = (
        engine.cgroups.slot(
            workspace.path.name,
            limits,
            tmpfs_mb=2 * limits.tmp_mb + (workspace.quota_bytes or 0) // MiB,
        )
        if engine.cgroups
        else None
    )
    holder = engine.mounts if workspace.enforced else None
    try:
        process = await SandboxProcess.spawn(
            bwrap=engine.bwrap,
            policy=policy,
            identity=engine.identity,
            rlimits=rlimits_for(limits, cgroup=cgroup is not None),
            cgroup=cgroup,
            launcher=holder.enter_argv() if holder else (),
            write_maps=holder.write_maps if holder and holder.writes_maps() else None,
        )
    except BaseException:
        if cgroup is not None:
            cgroup.remove()
        await asyncio.to_thread(workspace.destroy)
        raise
    return ServerProcess(process, workspace)
