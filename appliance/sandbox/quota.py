"""Workspace quotas the kernel enforces: every workspace is a tmpfs of its own size.

A write that would take a workspace past `workspace_mb` (or past its file count) fails in the
sandbox with ENOSPC, at once; nothing is polled. The choice, against the alternatives:

- A size-limited tmpfs per workspace (this module). Works for an unprivileged daemon (the
  systemd unit runs as the `appliance` user) as well as for root, needs no file system support,
  and its pages are RAM (and swap), never the state directory's disk: a sandbox cannot fill the
  disk the database lives on. The price is memory, so the admission of sandboxes
  (admission.py) counts each workspace's quota with its memory limit.
- A loop-mounted image per workspace: needs root (loop devices), and it lives on a disk.
- Project quotas: need root and a file system mounted with prjquota (XFS, ext4), rare on the
  hosts this runs on, and the workspace would still share the database's disk.

Where the mounts live. Only root may mount in the host's mount namespace, and a host mount
outlives a daemon that is killed. So the daemon starts one small holder process (quota_holder.py)
in a bwrap of its own: a new mount namespace (in a new user namespace when the daemon is not
root) that sees the host's whole file system, with the capability to mount there. Workspace
directories are created on the host as before; the holder mounts a tmpfs on each one, visible
only in its namespace. From there:

- sandboxes are started through `nsenter` into that namespace (and its user namespace when the
  daemon is unprivileged), so bwrap binds the tmpfs at /workspace; for an unprivileged daemon the
  holder also writes each sandbox's uid/gid maps, which only a process in the parent user
  namespace may do;
- the daemon reads and writes workspace files (inputs, outputs, the file API) through
  /proc/self/fd/<holder's root>/..., a directory descriptor it opened once, so no path can reach
  another process's namespace even if the holder's pid were reused. It also holds descriptors
  of the holder's namespaces (nsenter opens them through /proc/<daemon>/fd), which keep the
  mounts alive for as long as the daemon lives: should the holder be killed, the files of
  existing workspaces stay where they are, but new workspaces (and, for an unprivileged daemon,
  new sandbox processes, whose maps it writes) are refused with 503 until the daemon restarts;
- when the daemon dies, so does the holder (bwrap's --die-with-parent, and its stdin closes), and
  with its namespace every workspace tmpfs is gone: no stale mount can survive a crash. The empty
  directories left on disk are removed at the next start (engine.clean_stale_workspaces).

When the holder cannot start (no nsenter, a kernel or LSM that refuses the mount), the daemon
falls back to polling the workspace size, logs a warning, and `appliance doctor` says so;
`sandbox.workspace_quota = "tmpfs"` makes that a failure instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import select
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

from appliance.sandbox.aio import close_quietly, read_to_end, set_nonblocking
from appliance.sandbox.errors import SandboxUnavailable
from appliance.sandbox.identity import SandboxIdentity
from appliance.sandbox.limits import MiB, SandboxLimits
from appliance.sandbox.workspace import MAX_WORKSPACE_ENTRIES, Workspace

log = logging.getLogger("appliance.sandbox")

HOLDER = Path(__file__).resolve().parent / "quota_holder.py"
START_TIMEOUT_S = 20.0
REQUEST_TIMEOUT_S = 10.0


class QuotaUnavailable(Exception):
    """The holder could not be started or cannot mount; the message says why."""


def find_nsenter() -> str | None:
    return shutil.which("nsenter", path="/usr/bin:/bin:/usr/sbin:/sbin")


def holder_args(identity: SandboxIdentity, info_fd: int) -> list[str]:
    """bwrap's arguments for the holder (before `--` and its command)."""
    args: list[str] = []
    if identity.daemon_is_root:
        # the host's user namespace: root's mounts, sandboxes' maps written by the daemon itself
        args += ["--cap-drop", "ALL", "--cap-add", "CAP_SYS_ADMIN"]
    else:
        uid, gid = str(identity.host_uid), str(identity.host_gid)
        args += ["--unshare-user", "--uid", uid, "--gid", gid]
        args += ["--cap-add", "CAP_SYS_ADMIN", "--cap-add", "CAP_SETUID"]
        args += ["--cap-add", "CAP_SETGID"]
    # the whole host file system, devices usable (nested sandboxes bind /dev/null and friends)
    args += ["--dev-bind", "/", "/", "--die-with-parent", "--info-fd", str(info_fd)]
    return [*args, "--chdir", "/"]


class WorkspaceMounts:
    """The holder process, and the mounts, namespace entry and maps the daemon asks of it."""

    def __init__(
        self,
        popen: subprocess.Popen[bytes],
        pid: int,
        identity: SandboxIdentity,
        nsenter: str,
    ) -> None:
        self.popen = popen
        self.pid = pid
        self.identity = identity
        self.nsenter = nsenter
        self._lock = threading.Lock()
        self._buffer = b""
        assert popen.stdin is not None and popen.stdout is not None
        self._in = popen.stdin.fileno()
        self._out = popen.stdout.fileno()
        self._pidfd = os.pidfd_open(pid)
        self.mnt_fd = self.user_fd = self.root_fd = -1

    def _attach(self) -> None:
        """Open the holder's namespaces and root once it runs (after bwrap's pivot_root)."""
        flags = os.O_RDONLY | os.O_CLOEXEC
        self.mnt_fd = os.open(f"/proc/{self.pid}/ns/mnt", flags)
        if not self.identity.daemon_is_root:
            self.user_fd = os.open(f"/proc/{self.pid}/ns/user", flags)
        self.root_fd = os.open(f"/proc/{self.pid}/root", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        if not self.alive:  # the fds might belong to a process that reused the pid
            raise QuotaUnavailable("the workspace mount holder ended as soon as it started")

    # --- start and stop -----------------------------------------------------------------------

    @classmethod
    async def start(
        cls,
        bwrap: Path,
        identity: SandboxIdentity,
        probe_dir: Path,
        env: dict[str, str] | None = None,
    ) -> WorkspaceMounts:
        """Start the holder (on the event loop's thread: --die-with-parent follows the thread
        that forked) and check that it can mount a tmpfs in `probe_dir`'s parent."""
        nsenter = find_nsenter()
        if nsenter is None:
            raise QuotaUnavailable("util-linux's nsenter is missing (apt install util-linux)")
        info_r, info_w = os.pipe()
        argv = [str(bwrap), *holder_args(identity, info_w), "--"]
        argv += [sys.executable, "-I", "-S", str(HOLDER)]
        try:
            popen = subprocess.Popen(
                argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                pass_fds=(info_w,),
                start_new_session=True,
                env=dict(env or {}),  # nothing of the daemon's but the marker, if given
                cwd="/",
            )
        except OSError as exc:
            close_quietly(info_r, info_w)
            raise QuotaUnavailable(f"cannot start bwrap for the mount holder: {exc}") from exc
        close_quietly(info_w)
        try:
            set_nonblocking(info_r)
            raw = await asyncio.wait_for(read_to_end(info_r), START_TIMEOUT_S)
            if not raw:
                raise QuotaUnavailable(f"bwrap could not start the mount holder: {_stderr(popen)}")
            mounts = cls(popen, int(json.loads(raw)["child-pid"]), identity, nsenter)
        except (TimeoutError, OSError, ValueError, KeyError) as exc:
            _end(popen)
            raise QuotaUnavailable(f"the mount holder did not start: {exc}") from exc
        except BaseException:
            _end(popen)
            raise
        finally:
            close_quietly(info_r)
        try:
            ready = await asyncio.to_thread(mounts._read_answer)
            if not ready.get("ok"):
                raise QuotaUnavailable(f"the mount holder failed: {ready}")
            mounts._attach()
            await asyncio.to_thread(mounts.probe, probe_dir)
        except (OSError, SandboxUnavailable) as exc:
            mounts.close()
            raise QuotaUnavailable(f"the mount holder does not work: {exc}") from exc
        except BaseException:
            mounts.close()
            raise
        return mounts

    def probe(self, path: Path) -> None:
        """Mount and unmount a tiny tmpfs, so a host that refuses it is found at start."""
        path.mkdir(mode=0o700, exist_ok=True)
        uid, gid, mode = self._owner()
        try:
            self.request(
                "mount", path=_real(path), size=MiB, inodes=16, mode=mode, uid=uid, gid=gid
            )
            self.request("unmount", path=_real(path))
        except OSError as exc:
            raise QuotaUnavailable(f"the mount holder cannot mount a tmpfs: {exc}") from exc
        finally:
            with contextlib.suppress(OSError):
                path.rmdir()

    @property
    def alive(self) -> bool:
        return self._pidfd >= 0 and not select.select([self._pidfd], [], [], 0)[0]

    def close(self) -> None:
        """End the holder; mounts stay alive only while some sandbox still uses them."""
        close_quietly(self.mnt_fd, self.user_fd, self.root_fd, self._pidfd)
        self.mnt_fd = self.user_fd = self.root_fd = self._pidfd = -1
        _end(self.popen)

    # --- the protocol -------------------------------------------------------------------------

    def _read_answer(self) -> dict[str, Any]:
        while b"\n" not in self._buffer:
            ready, _, _ = select.select([self._out], [], [], REQUEST_TIMEOUT_S)
            if not ready:
                raise SandboxUnavailable(
                    f"the workspace mount holder (pid {self.pid}) stopped answering; "
                    "restart the daemon"
                )
            chunk = os.read(self._out, 4096)
            if not chunk:
                raise SandboxUnavailable(
                    f"the workspace mount holder (pid {self.pid}) has ended; restart the daemon"
                )
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        answer: dict[str, Any] = json.loads(line)
        return answer

    def request(self, op: str, **fields: object) -> None:
        """Ask the holder for one thing; OSError with the holder's errno when it fails."""
        with self._lock:
            try:
                os.write(self._in, json.dumps({"op": op, **fields}).encode() + b"\n")
            except BrokenPipeError:
                raise SandboxUnavailable(
                    f"the workspace mount holder (pid {self.pid}) has ended; restart the daemon"
                ) from None
            answer = self._read_answer()
        if not answer.get("ok"):
            raise OSError(
                int(answer.get("errno") or 0), str(answer.get("error")), fields.get("path")
            )

    # --- what the engine uses -----------------------------------------------------------------

    def quota_workspace(self, ws: Workspace, limits: SandboxLimits) -> Workspace:
        """`ws` (a fresh, empty directory) as a tmpfs of `limits.workspace_mb`."""
        real = _real(ws.path)
        size = limits.workspace_mb * MiB
        uid, gid, mode = self._owner()
        try:
            self.request(
                "mount",
                path=real,
                size=size,
                inodes=MAX_WORKSPACE_ENTRIES + 1,
                mode=mode,
                uid=uid,
                gid=gid,
            )
        except OSError as exc:
            raise SandboxUnavailable(
                f"cannot mount the workspace quota on {real}: {exc}; see `appliance doctor`, "
                'or set sandbox.workspace_quota = "poll"'
            ) from exc

        def unmount() -> None:
            try:
                self.request("unmount", path=real)
            except (OSError, SandboxUnavailable) as exc:
                log.warning("cannot unmount the workspace tmpfs on %s: %s", real, exc)

        return Workspace(
            self.access(real),
            ws.identity,
            bind_source=ws.path,
            quota_bytes=size,
            unmount=unmount,
        )

    def _owner(self) -> tuple[int, int, int]:
        """Owner and mode of a workspace's tmpfs root, as Workspace.create leaves a directory
        (identity.own_workspace); ids as the holder's user namespace maps them."""
        if self.identity.daemon_is_root:
            return self.identity.host_uid, 0, 0o710
        return self.identity.host_uid, self.identity.host_gid, 0o700

    def access(self, real: str) -> Path:
        """Where the daemon reaches `real` (an absolute path) inside the holder's namespace."""
        return Path(f"/proc/self/fd/{self.root_fd}") / real.lstrip("/")

    def enter_argv(self) -> tuple[str, ...]:
        """The command before bwrap that starts it in the holder's namespaces.

        nsenter opens the daemon's own descriptors of them through /proc/<daemon>/fd: nothing is
        inherited (an inherited descriptor would stay open in the sandbox), and the daemon, whose
        child nsenter is, cannot have been replaced by another process under that pid.
        """
        fds = f"/proc/{os.getpid()}/fd"
        if self.identity.daemon_is_root:
            return (self.nsenter, f"--mount={fds}/{self.mnt_fd}", "--")
        return (
            self.nsenter,
            f"--user={fds}/{self.user_fd}",
            f"--mount={fds}/{self.mnt_fd}",
            "--preserve-credentials",
            "--",
        )

    def writes_maps(self) -> bool:
        """Whether sandboxes' uid/gid maps must come from the holder (an unprivileged daemon:
        their user namespaces are children of the holder's)."""
        return not self.identity.daemon_is_root

    def write_maps(self, pid: int) -> None:
        self.request(
            "maps", pid=pid, uid_map=self.identity.uid_map(), gid_map=self.identity.gid_map()
        )


def _real(path: Path) -> str:
    # resolved in the daemon's namespace: an absolute symlink met under /proc/self/fd/<root>
    # would be followed from the daemon's root, not the holder's
    return os.path.realpath(path)


def _stderr(popen: subprocess.Popen[bytes]) -> str:
    try:
        _, err = popen.communicate(timeout=5)
    except subprocess.TimeoutExpired:
        popen.kill()
        _, err = popen.communicate()
    return err.decode(errors="replace").strip() or f"bwrap exited with {popen.returncode}"


def _end(popen: subprocess.Popen[bytes]) -> None:
    for f in (popen.stdin,):
        if f is not None:
            with contextlib.suppress(OSError):
                f.close()
    with contextlib.suppress(ProcessLookupError):
        popen.kill()
    try:
        popen.wait(timeout=5)
    except subprocess.TimeoutExpired:
        log.warning("the workspace mount holder (bwrap %d) did not exit", popen.pid)
    for f in (popen.stdout, popen.stderr):
        if f is not None:
            with contextlib.suppress(OSError):
                f.close()
