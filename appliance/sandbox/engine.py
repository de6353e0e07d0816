"""The sandbox engine: everything needed to start a sandbox for a language, in one place.

It holds what is fixed for the daemon's life (the bwrap binary, who sandboxed code runs as, the
host's system mounts, the workspace root and its quota mounts, the cgroup delegate) and turns a
language, a workspace, a command and limits into a running SandboxProcess. Higher layers
(one-shot runs, the warm pool, stateful sandboxes) only say what to run, never how to isolate it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import re
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from appliance.config import STATE_DIR_ENV
from appliance.sandbox import seccomp
from appliance.sandbox.aio import close_quietly
from appliance.sandbox.cgroup import CgroupDelegate
from appliance.sandbox.errors import SandboxUnavailable
from appliance.sandbox.identity import SandboxIdentity
from appliance.sandbox.images.runtime import HostHelper, image_cwd, image_env, image_mounts
from appliance.sandbox.limits import DEFAULT_LIMITS, MiB, SandboxLimits, rlimits_for
from appliance.sandbox.policy import (
    DRIVER_DIR,
    WORKSPACE,
    Mount,
    SandboxPolicy,
    base_mounts,
    sandbox_env,
    system_mounts,
    write_sandbox_etc,
)
from appliance.sandbox.process import SandboxProcess
from appliance.sandbox.profiles import COMMAND_PROFILE, DRIVERS, ProfileCatalog, ResolvedLanguage
from appliance.sandbox.quota import QuotaUnavailable, WorkspaceMounts
from appliance.sandbox.repl import DRIVER_FILES_DIR, DriverSandbox
from appliance.sandbox.results import RunOutcome
from appliance.sandbox.runner import supervise
from appliance.sandbox.workspace import Workspace, remove_tree

log = logging.getLogger("appliance.sandbox")

WORKSPACE_PREFIXES = ("run-", "pool-", "sbx-")
MNT_DETACH = 2
QuotaMode = Literal["auto", "tmpfs", "poll"]


@dataclass(frozen=True)
class EngineConfig:
    bwrap: Path
    root: Path
    """`<state_dir>/sandboxes`: workspaces and the sandbox's /etc files."""
    identity: SandboxIdentity
    cgroups: CgroupDelegate | None = None
    seccomp: bool = True
    workspace_quota: QuotaMode = "auto"
    """tmpfs: workspaces are size-limited tmpfs mounts (quota.py) or sandboxes are unavailable;
    poll: plain directories whose size is polled; auto: tmpfs where the host allows it."""


class SandboxEngine:
    def __init__(self, config: EngineConfig, catalog: ProfileCatalog) -> None:
        self.bwrap = config.bwrap
        self.root = config.root
        self.identity = config.identity
        self.cgroups = config.cgroups
        self.catalog = catalog
        self.system = system_mounts()
        self.seccomp = config.seccomp and seccomp.host_supported()
        """Whether sandboxes run under the syscall filter (seccomp.py knows x86_64 and aarch64)."""
        self.root.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o700)
        self.etc_dir = write_sandbox_etc(self.root / ".etc")
        self._helper: HostHelper | None = None
        self.quota_mode: QuotaMode = config.workspace_quota
        self.mounts: WorkspaceMounts | None = None
        """The holder of the workspaces' tmpfs mounts; None when workspace sizes are polled."""
        self.quota_problem: str | None = None
        """Why workspace sizes are polled rather than enforced by the kernel, when they are."""

    async def start(self) -> None:
        """Start what needs the event loop: the workspace mount holder (quota.py); and, for a
        root daemon, find the files its setpriv needs inside images (images/runtime.py)."""
        if self.identity.daemon_is_root:
            try:
                self._helper = await asyncio.to_thread(HostHelper.for_binary, self.identity.setpriv)
            except SandboxUnavailable as exc:
                log.warning("sandboxes cannot run in images: %s", exc.message)
        if self.quota_mode == "poll":
            self.quota_problem = 'sandbox.workspace_quota is "poll"'
            return
        try:
            self.mounts = await WorkspaceMounts.start(
                self.bwrap,
                self.identity,
                self.root / ".quota-probe",
                env={STATE_DIR_ENV: os.path.realpath(self.root.parent)},
            )
        except QuotaUnavailable as exc:
            self.quota_problem = str(exc)
            if self.quota_mode == "tmpfs":
                raise SandboxUnavailable(
                    f"workspace quotas cannot be enforced: {exc}. Run `appliance doctor`, or set "
                    'sandbox.workspace_quota = "auto" to fall back to polling workspace sizes'
                ) from exc
            log.warning(
                "workspace sizes will be polled, not enforced by the kernel: %s", self.quota_problem
            )

    def stop(self) -> None:
        if self.mounts is not None:
            self.mounts.close()
            self.mounts = None

    @property
    def workspaces_in_ram(self) -> bool:
        """Whether workspaces are tmpfs (RAM): admission then counts their quota as memory."""
        return self.mounts is not None

    def clean_stale_workspaces(self) -> int:
        """Remove workspaces left by an earlier daemon (their sandboxes died with it).

        Their tmpfs mounts died with that daemon's quota holder; a workspace that is a mount point
        anyway (or holds one: made in this namespace by hand or by another tool) is unmounted
        first, since removing the files of a mounted file system would empty it and then fail on
        the mount point itself.
        """
        removed = 0
        for entry in self.root.iterdir():
            if entry.name.startswith(WORKSPACE_PREFIXES) or entry.name == ".quota-probe":
                if not unmount_all(entry):
                    log.warning("cannot unmount stale workspace %s; left in place", entry)
                    continue
                remove_tree(entry)
                removed += 1
        return removed

    def new_workspace(self, prefix: str, limits: SandboxLimits = DEFAULT_LIMITS) -> Workspace:
        """A fresh workspace; a tmpfs of `limits.workspace_mb` when quotas are enforced."""
        ws = Workspace.create(self.root, f"{prefix}{secrets.token_hex(8)}", self.identity)
        if self.mounts is None:
            return ws
        try:
            return self.mounts.quota_workspace(ws, limits)
        except BaseException:
            ws.destroy()
            raise

    # --- policies and processes ---------------------------------------------------------------------

    def policy(
        self,
        lang: ResolvedLanguage,
        workspace: Workspace,
        command: list[str],
        limits: SandboxLimits,
        *,
        network: bool = False,
    ) -> SandboxPolicy:
        drivers = [(str(DRIVER_FILES_DIR / f), f"{DRIVER_DIR}/{f}") for f in DRIVERS.values()]
        if lang.image is not None:
            return self._image_policy(lang, workspace, command, limits, network, drivers)
        mounts: tuple[Mount, ...] = base_mounts(
            system=self.system,
            etc_dir=self.etc_dir,
            workspace=workspace.bind_source,
            toolchain_roots=lang.toolchain_roots,
            extra_ro=lang.extra_binds,
            drivers=drivers if lang.profile.repl else [],
            tmp_bytes=limits.tmp_mb * MiB,
            network=network,
        )
        env = sandbox_env(lang.path_dirs, tuple(lang.profile.env.items()))
        return SandboxPolicy(
            command=(*self.identity.command_prefix(), *command),
            mounts=mounts,
            env=env,
            network=network,
            uid=self.identity.bwrap_uid,
            gid=self.identity.bwrap_gid,
            keep_caps=self.identity.keep_caps,
            drop_all_caps=self.identity.daemon_is_root,
            seccomp=self.seccomp,
        )

    def _image_policy(
        self,
        lang: ResolvedLanguage,
        workspace: Workspace,
        command: list[str],
        limits: SandboxLimits,
        network: bool,
        drivers: list[tuple[str, str]],
    ) -> SandboxPolicy:
        """The policy of a sandbox in an image (images/runtime.py): the same namespaces, uid,
        capabilities and seccomp filter as on the host toolchains, another root."""
        assert lang.image is not None
        prefix = self.identity.command_prefix()
        helper = None
        if prefix:  # the root daemon's setpriv, run from the host's files
            if self._helper is None:
                raise SandboxUnavailable(
                    "sandboxes cannot run in images here: the daemon runs as root and the "
                    "libraries of its setpriv could not be listed (see the log); install "
                    "libc-bin (ldd), or run the daemon as an ordinary user"
                )
            helper = self._helper
            prefix = (*helper.argv, *prefix[1:])
        mounts = image_mounts(
            image=lang.image,
            etc_dir=self.etc_dir,
            workspace=workspace.bind_source,
            drivers=drivers if lang.profile.repl else [],
            helper=helper,
            tmp_bytes=limits.tmp_mb * MiB,
            network=network,
        )
        command_run = lang.profile is COMMAND_PROFILE
        return SandboxPolicy(
            command=(*prefix, *command),
            mounts=mounts,
            env=image_env(lang.image, tuple(lang.profile.env.items())),
            network=network,
            cwd=image_cwd(lang.image) if command_run else WORKSPACE,
            uid=self.identity.bwrap_uid,
            gid=self.identity.bwrap_gid,
            keep_caps=self.identity.keep_caps,
            drop_all_caps=self.identity.daemon_is_root,
            seccomp=self.seccomp,
            # the drivers' tmpfs is a mount of its own, which `--remount-ro /` leaves writable
            extra=("--remount-ro", DRIVER_DIR),
        )

    async def spawn(
        self,
        lang: ResolvedLanguage,
        workspace: Workspace,
        command: list[str],
        limits: SandboxLimits,
        *,
        network: bool = False,
        pass_fds: tuple[int, ...] = (),
    ) -> SandboxProcess:
        cgroup = (
            self.cgroups.slot(
                workspace.path.name + "-" + secrets.token_hex(3),
                limits,
                tmpfs_mb=2 * limits.tmp_mb + (workspace.quota_bytes or 0) // MiB,
            )
            if self.cgroups
            else None
        )
        mounts = self.mounts if workspace.enforced else None
        try:
            return await SandboxProcess.spawn(
                bwrap=self.bwrap,
                policy=self.policy(lang, workspace, command, limits, network=network),
                identity=self.identity,
                rlimits=rlimits_for(limits, cgroup=cgroup is not None),
                cgroup=cgroup,
                pass_fds=pass_fds,
                launcher=mounts.enter_argv() if mounts else (),
                write_maps=mounts.write_maps if mounts and mounts.writes_maps() else None,
            )
        except BaseException:
            if cgroup is not None:
                cgroup.remove()
            raise

    async def run_command(
        self,
        lang: ResolvedLanguage,
        workspace: Workspace,
        command: list[str],
        limits: SandboxLimits,
        *,
        stdin: bytes = b"",
        network: bool = False,
        started: float | None = None,
    ) -> RunOutcome:
        """Start a fresh sandbox for `command` and run it to its end."""
        started = time.monotonic() if started is None else started
        proc = await self.spawn(lang, workspace, command, limits, network=network)
        try:
            return await supervise(
                proc,
                limits=limits,
                stdin=stdin,
                workspace=workspace,
                oom_patterns=oom_patterns(lang),
                started=started,
            )
        finally:
            with contextlib.suppress(Exception):
                await proc.close()

    async def start_driver(
        self,
        lang: ResolvedLanguage,
        limits: SandboxLimits,
        *,
        workspace: Workspace | None = None,
        network: bool = False,
    ) -> DriverSandbox:
        """A sandbox whose interpreter has started and waits for code (pool or stateful)."""
        own_workspace = workspace is None
        ws = workspace or self.new_workspace("pool-", limits)
        result_r, result_w = os.pipe()
        try:
            proc = await self.spawn(
                lang,
                ws,
                lang.driver_argv(limits, result_w),
                limits,
                network=network,
                pass_fds=(result_w,),
            )
        except BaseException:
            close_quietly(result_r, result_w)
            if own_workspace:
                await asyncio.to_thread(ws.destroy)
            raise
        close_quietly(result_w)
        sandbox = DriverSandbox(
            proc, ws, limits, result_r, language=lang.name, oom_patterns=oom_patterns(lang)
        )
        try:
            await sandbox.wait_ready()
        except BaseException:
            await sandbox.destroy(keep_workspace=not own_workspace)
            raise
        return sandbox


def mounts_under(path: Path, mountinfo: Path = Path("/proc/self/mountinfo")) -> list[str]:
    """Mount points at or below `path`, deepest first."""
    top = os.path.realpath(path)
    found: list[str] = []
    with contextlib.suppress(OSError):
        for line in mountinfo.read_text().splitlines():
            fields = line.split()
            if len(fields) > 4:
                # mountinfo escapes space, tab, newline and backslash as octal
                point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[4])
                if point == top or point.startswith(top + "/"):
                    found.append(point)
    return sorted(set(found), key=lambda m: m.count("/"), reverse=True)


def unmount_all(path: Path) -> bool:
    """Detach every mount at or below `path`; False when one cannot be (no privilege)."""
    libc = ctypes.CDLL(None, use_errno=True)
    for point in mounts_under(path):
        if libc.umount2(point.encode(), MNT_DETACH) != 0:
            err = ctypes.get_errno()
            log.warning("cannot unmount %s: %s", point, os.strerror(err))
            return False
    return True


def oom_patterns(lang: ResolvedLanguage) -> tuple[bytes, ...]:
    return tuple(p.encode() for p in lang.profile.oom_patterns)
