"""Who sandboxed code is on the host, and the user namespace mapping that makes it so.

Each sandbox gets its own user namespace, created by bwrap and held (`--userns-block-fd`) until
the daemon has written its uid/gid maps and set its resource limits. Two cases:

- The daemon is an ordinary user (the normal, systemd-managed case): the namespace maps the
  sandbox user (uid 1000 inside) to the daemon's own uid, as bwrap would. RLIMIT_NPROC is set on
  the sandbox's first process after the namespace exists, so it counts that sandbox's processes
  only, not every process of the daemon's user.
- The daemon is root: running the code as root on the host (even inside a namespace) would put
  it beyond RLIMIT_NPROC, which the kernel never enforces for root. So the namespace maps root to
  root for bwrap's own set-up (it must reach toolchains under /root) and uid 1000 to an
  unprivileged host uid (`sandbox.sandbox_uid`, default nobody). The first process is util-linux
  `setpriv`, which switches to uid 1000 with no capabilities left before running the program.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from appliance.sandbox.errors import SandboxUnavailable

INSIDE_UID = 1000
INSIDE_GID = 1000


@dataclass(frozen=True)
class SandboxIdentity:
    host_uid: int
    """The host uid sandboxed code runs as."""
    host_gid: int
    daemon_is_root: bool
    setpriv: str = ""
    """Path of setpriv (root daemons only)."""

    @classmethod
    def for_host(cls, *, sandbox_uid: int, sandbox_gid: int) -> SandboxIdentity:
        if os.geteuid() != 0:
            return cls(host_uid=os.getuid(), host_gid=os.getgid(), daemon_is_root=False)
        if sandbox_uid == 0 or sandbox_gid == 0:
            raise SandboxUnavailable(
                "sandbox.sandbox_uid and sandbox.sandbox_gid must not be 0: sandboxed code must "
                "not be root on the host. Use an unused uid (default 65534, nobody)."
            )
        return cls(
            host_uid=sandbox_uid, host_gid=sandbox_gid, daemon_is_root=True, setpriv=find_setpriv()
        )

    # --- what bwrap is told ---------------------------------------------------------------

    @property
    def bwrap_uid(self) -> int:
        """The uid bwrap sets up the sandbox as (root's set-up runs as root inside)."""
        return 0 if self.daemon_is_root else INSIDE_UID

    @property
    def bwrap_gid(self) -> int:
        return 0 if self.daemon_is_root else INSIDE_GID

    @property
    def keep_caps(self) -> tuple[str, ...]:
        return ("CAP_SETUID", "CAP_SETGID") if self.daemon_is_root else ()

    def command_prefix(self) -> tuple[str, ...]:
        """What runs before the program: setpriv dropping to the sandbox user, for root daemons."""
        if not self.daemon_is_root:
            return ()
        return (
            self.setpriv,
            f"--reuid={INSIDE_UID}",
            f"--regid={INSIDE_GID}",
            "--clear-groups",
            "--inh-caps=-all",
            "--pdeathsig=keep",
            "--",
        )

    # --- the namespace's maps ---------------------------------------------------------------

    def uid_map(self) -> str:
        if self.daemon_is_root:
            return f"0 0 1\n{INSIDE_UID} {self.host_uid} 1\n"
        return f"{INSIDE_UID} {self.host_uid} 1\n"

    def gid_map(self) -> str:
        if self.daemon_is_root:
            return f"0 0 1\n{INSIDE_GID} {self.host_gid} 1\n"
        return f"{INSIDE_GID} {self.host_gid} 1\n"

    def write_maps(self, pid: int, proc: Path = Path("/proc")) -> None:
        """Write the user namespace maps of bwrap's sandbox process `pid` (blocked meanwhile)."""
        base = proc / str(pid)
        if not self.daemon_is_root:
            (base / "setgroups").write_text("deny")
        (base / "uid_map").write_text(self.uid_map())
        (base / "gid_map").write_text(self.gid_map())

    def own_workspace(self, path: Path) -> None:
        """Make a new workspace directory the sandbox user's.

        For root daemons the group stays root with search permission only: bwrap enters the
        directory as root-without-capabilities before setpriv drops to the sandbox user.
        """
        if self.daemon_is_root:
            os.chown(path, self.host_uid, 0)
            os.chmod(path, 0o710)
        else:
            os.chmod(path, 0o700)

    def chown(self, path: Path) -> None:
        """Give `path` to the sandbox user (a no-op when that is the daemon's own user)."""
        if self.daemon_is_root:
            os.chown(path, self.host_uid, self.host_gid, follow_symlinks=False)


def find_setpriv() -> str:
    found = shutil.which("setpriv", path="/usr/bin:/bin:/usr/sbin:/sbin")
    if not found:
        raise SandboxUnavailable(
            "the daemon runs as root and needs util-linux's setpriv to drop sandboxed code to an "
            "unprivileged user; install util-linux (apt install util-linux), or run the daemon as "
            "an ordinary user"
        )
    real = os.path.realpath(found)
    try:
        helptext = subprocess.run(
            [real, "--help"], capture_output=True, text=True, timeout=10
        ).stdout
    except OSError as exc:
        raise SandboxUnavailable(f"cannot run {real}: {exc}; reinstall util-linux") from exc
    if "--pdeathsig" not in helptext:
        raise SandboxUnavailable(
            f"{real} is too old (it lacks --pdeathsig, util-linux 2.33+); upgrade util-linux or "
            "run the daemon as an ordinary user"
        )
    return real
