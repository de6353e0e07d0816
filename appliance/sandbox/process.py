"""One running bwrap sandbox: start it, limit it, wait for it, kill it.

Start-up is a handshake. bwrap creates the sandbox's namespaces, reports the pid of the
sandbox's first process on `--info-fd`, and blocks on `--userns-block-fd`. In that window the
daemon writes the user namespace maps (see identity.py), sets the resource limits on that process
with prlimit(2) (so RLIMIT_NPROC counts only this sandbox's processes), and moves it into its
cgroup when there is one. Only then does the program start.

The first process runs as the sandbox's pid 1 (`--as-pid-1`), so killing it (through a pidfd, so
a recycled pid can never be hit) makes the kernel kill everything else in the sandbox. The
outer bwrap process is our child; it reaps the program and exits with its status (128+n for a
signal), and wait4() on it gives the program's peak memory in its rusage.

Processes are spawned on the event loop's thread: bwrap's --die-with-parent is tied to the
thread that forked it, and the loop thread lives as long as the daemon. The death signal then runs
down the chain: the daemon's death kills bwrap, bwrap's kills the sandbox's pid 1 (bwrap arms it
just before the exec), and that kills the whole pid namespace. One gap is bwrap's own: its sandbox
process arms the signal only after the handshake, so a start abandoned half-way (cancelled, or
failed) kills that process as well as bwrap (`_abort`); what a daemon that died in that window
leaves is reaped by its janitor (appliance.host.janitor).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import resource
import select
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from appliance.sandbox import seccomp
from appliance.sandbox.aio import close_quietly, read_to_end, set_nonblocking, wait_readable
from appliance.sandbox.errors import SandboxUnavailable
from appliance.sandbox.identity import SandboxIdentity
from appliance.sandbox.limits import Rlimits
from appliance.sandbox.policy import SandboxPolicy, bwrap_args

if TYPE_CHECKING:
    from appliance.sandbox.cgroup import CgroupSlot

log = logging.getLogger("appliance.sandbox")

SETUP_TIMEOUT_S = 20.0
_CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class ProcessExit:
    returncode: int
    """bwrap's exit status: the program's exit code, or 128+n when a signal n ended it."""
    maxrss_kb: int
    """bwrap's ru_maxrss (see SandboxProcess.peak_kb for what it is worth)."""
    cpu_s: float = 0.0
    """CPU time of the sandbox's processes (user + system), the ones reaped by their end."""


class SandboxProcess:
    def __init__(
        self,
        popen: subprocess.Popen[bytes],
        inner_pid: int,
        inner_pidfd: int,
        cgroup: CgroupSlot | None,
    ) -> None:
        self.popen = popen
        self.inner_pid = inner_pid
        self._inner_pidfd = inner_pidfd
        self.cgroup = cgroup
        assert popen.stdout is not None and popen.stderr is not None
        self.stdout_fd = popen.stdout.fileno()
        self.stderr_fd = popen.stderr.fileno()
        self.stdin_fd = popen.stdin.fileno() if popen.stdin is not None else None
        set_nonblocking(
            *(fd for fd in (self.stdout_fd, self.stderr_fd, self.stdin_fd) if fd is not None)
        )
        self._exit: asyncio.Future[ProcessExit] | None = None
        self.spawn_floor_kb = 0
        """The daemon's own peak RSS when it spawned bwrap: bwrap inherits it as a floor of its
        ru_maxrss (exec keeps the old address space's high-water mark), so only a larger value
        there says something about the program."""
        self.sampled_peak_kb = 0
        self.cpu_baseline_s = 0.0
        """CPU time spent before the program was handed its code (a pooled interpreter's start)."""

    @classmethod
    async def spawn(
        cls,
        *,
        bwrap: Path,
        policy: SandboxPolicy,
        identity: SandboxIdentity,
        rlimits: Rlimits,
        cgroup: CgroupSlot | None = None,
        pass_fds: tuple[int, ...] = (),
        stdin: bool = True,
        launcher: tuple[str, ...] = (),
        write_maps: Callable[[int], None] | None = None,
    ) -> SandboxProcess:
        """Start bwrap (behind `launcher`, a command that execs it, such as nsenter into the
        workspace mount namespace) and complete the handshake; `write_maps` replaces
        identity.write_maps when another process must write the user namespace maps."""
        floor_kb = _own_peak_kb()
        info_r, info_w = os.pipe()
        block_r, block_w = os.pipe()
        filter_r = seccomp.filter_fd() if policy.seccomp else -1
        argv = [
            *launcher,
            str(bwrap),
            *bwrap_args(
                policy,
                info_fd=info_w,
                userns_block_fd=block_r,
                seccomp_fd=filter_r if filter_r >= 0 else None,
            ),
        ]
        own_fds = (info_w, block_r) + ((filter_r,) if filter_r >= 0 else ())
        try:
            popen = subprocess.Popen(
                argv,
                stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                pass_fds=(*own_fds, *pass_fds),
                start_new_session=True,
                env={},
                cwd="/",
            )
        except OSError as exc:
            close_quietly(info_r, block_w, *own_fds)
            raise SandboxUnavailable(f"cannot start bwrap ({bwrap}): {exc}") from exc
        close_quietly(*own_fds)
        inner_pidfd = -1
        try:
            set_nonblocking(info_r)
            try:
                raw = await asyncio.wait_for(read_to_end(info_r), SETUP_TIMEOUT_S)
            except TimeoutError as exc:
                raise SandboxUnavailable(
                    "bwrap did not report its sandbox within "
                    f"{SETUP_TIMEOUT_S:g}s; the host is overloaded"
                ) from exc
            if not raw:
                raise SandboxUnavailable(_bwrap_failure(popen))
            inner_pid = int(json.loads(raw)["child-pid"])
            inner_pidfd = os.pidfd_open(inner_pid)
            (write_maps or identity.write_maps)(inner_pid)
            for res, limit in rlimits.items():
                resource.prlimit(inner_pid, res, limit)
            if cgroup is not None:
                cgroup.attach(inner_pid)
            os.write(block_w, b"1")
        except BaseException:
            _abort(popen, inner_pidfd)
            raise
        finally:
            close_quietly(info_r, block_w)
        process = cls(popen, inner_pid, inner_pidfd, cgroup)
        process.spawn_floor_kb = floor_kb
        return process

    # --- lifecycle ----------------------------------------------------------------------------

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def finished(self) -> bool:
        """Whether the program has ended (reaped or not)."""
        if self._exit is not None and self._exit.done():
            return True
        if self._inner_pidfd < 0:
            return self.popen.returncode is not None
        poller = select.poll()
        poller.register(self._inner_pidfd, select.POLLIN)
        return bool(poller.poll(0))  # a pidfd turns readable when its process ends

    def wait(self) -> asyncio.Future[ProcessExit]:
        """A future of the exit; the same one on every call."""
        if self._exit is None:
            self._exit = asyncio.ensure_future(self._wait())
        return self._exit

    async def _wait(self) -> ProcessExit:
        pidfd = os.pidfd_open(self.popen.pid)
        try:
            while True:
                pid, status, usage = os.wait4(self.popen.pid, os.WNOHANG)
                if pid:
                    break
                await wait_readable(pidfd)
        finally:
            os.close(pidfd)
        code = os.waitstatus_to_exitcode(status)
        self.popen.returncode = code  # reaped here; Popen must not wait for it again
        if code < 0:  # bwrap itself was killed
            code = 128 - code
        return ProcessExit(
            returncode=code,
            maxrss_kb=int(usage.ru_maxrss),
            cpu_s=usage.ru_utime + usage.ru_stime,
        )

    def kill(self) -> None:
        """Kill the sandbox: its pid 1 (taking every process inside with it), then bwrap."""
        if self._inner_pidfd >= 0:
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(self._inner_pidfd, signal.SIGKILL)
        if self.popen.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.popen.pid, signal.SIGKILL)

    def interrupt(self) -> None:
        """SIGINT to the program (a REPL driver turns it into KeyboardInterrupt)."""
        if self._inner_pidfd >= 0:
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(self._inner_pidfd, signal.SIGINT)

    async def close(self) -> ProcessExit:
        """Kill (if still running), reap, and release every descriptor."""
        self.kill()
        result = await self.wait()
        self.release()
        return result

    def release(self) -> None:
        close_quietly(self._inner_pidfd)
        self._inner_pidfd = -1
        for f in (self.popen.stdin, self.popen.stdout, self.popen.stderr):
            if f is not None:
                with contextlib.suppress(OSError):
                    f.close()
        if self.cgroup is not None:
            self.cgroup.remove()

    # --- inspection and adjustment --------------------------------------------------------------

    def cpu_seconds(self) -> float:
        """CPU time the sandbox's first process has used so far (0 when it is gone).

        schedstat counts nanoseconds; stat's clock ticks (10 ms) are the fallback.
        """
        try:
            ns = int(Path(f"/proc/{self.inner_pid}/schedstat").read_text().split()[0])
            if ns > 0:  # 0: scheduler statistics are off in this kernel
                return ns / 1e9
        except (OSError, ValueError, IndexError):
            pass
        try:
            fields = Path(f"/proc/{self.inner_pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return 0.0
        return (int(fields[11]) + int(fields[12])) / _CLK_TCK

    def set_rlimits(self, rlimits: Rlimits) -> None:
        """Lower the running program's limits (a hard limit cannot be raised again; requests are
        clamped to the current one)."""
        for res, (soft, hard) in rlimits.items():
            current_hard = resource.prlimit(self.inner_pid, res)[1]
            if current_hard != resource.RLIM_INFINITY:
                hard = min(hard, current_hard)
            resource.prlimit(self.inner_pid, res, (min(soft, hard), hard))

    def sample_peak(self) -> None:
        """Record the program's own peak RSS so far (VmHWM of the sandbox's pid 1)."""
        if self.popen.returncode is None:
            self.sampled_peak_kb = max(
                self.sampled_peak_kb, _peak_kb(Path(f"/proc/{self.inner_pid}/status"))
            )

    def peak_kb(self, ended: ProcessExit) -> int:
        """Best knowledge of the program's peak memory once it has ended."""
        from_rusage = ended.maxrss_kb if ended.maxrss_kb > self.spawn_floor_kb + 1024 else 0
        return max(self.sampled_peak_kb, from_rusage)

    def count_processes(self) -> int:
        """Processes (threads included) in the sandbox right now."""
        total, todo, seen = 0, [self.inner_pid], set()
        while todo:
            pid = todo.pop()
            if pid in seen:
                continue
            seen.add(pid)
            try:
                tids = os.listdir(f"/proc/{pid}/task")
            except OSError:
                continue
            total += len(tids)
            for tid in tids:
                try:
                    children = Path(f"/proc/{pid}/task/{tid}/children").read_text().split()
                except OSError:
                    continue
                todo.extend(int(c) for c in children)
        return total


def _peak_kb(status: Path) -> int:
    try:
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _own_peak_kb() -> int:
    return _peak_kb(Path("/proc/self/status"))


def _bwrap_failure(popen: subprocess.Popen[bytes]) -> str:
    try:
        _, err = popen.communicate(timeout=5)
    except subprocess.TimeoutExpired:
        popen.kill()
        _, err = popen.communicate()
    text = err.decode(errors="replace").strip() or f"bwrap exited with {popen.returncode}"
    return (
        f"bwrap could not create the sandbox: {text}. Run `appliance doctor` to check that "
        "user namespaces are allowed on this host"
    )


def _abort(popen: subprocess.Popen[bytes], inner_pidfd: int) -> None:
    """Kill a bwrap whose handshake did not finish, and the sandbox process it may have cloned.

    That process arms its death signal only once bwrap lets it go on: killing bwrap alone would
    leave it waiting forever, pid 1 of its own pid namespace and adopted by init. Before bwrap has
    reported its pid, bwrap is stopped first (a stopped process cannot clone, and its children
    stay its own, so their pids cannot be reused) and its children are read from /proc.
    """
    if inner_pidfd >= 0:
        with contextlib.suppress(ProcessLookupError):
            signal.pidfd_send_signal(inner_pidfd, signal.SIGKILL)
    else:
        for child in _stopped_children(popen.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGKILL)
    popen.kill()
    close_quietly(inner_pidfd)
    _reap_later(popen)


def _stopped_children(pid: int, wait_s: float = 1.0) -> list[int]:
    """Stop `pid` (our child) and list its children once it has stopped."""
    try:
        os.kill(pid, signal.SIGSTOP)
    except ProcessLookupError:
        return []
    deadline = time.monotonic() + wait_s
    while _state(pid) not in ("T", "t", "Z", "X", "") and time.monotonic() < deadline:
        time.sleep(0.0005)
    children: list[int] = []
    with contextlib.suppress(OSError):
        for tid in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError, ValueError):
                children += map(int, Path(f"/proc/{pid}/task/{tid}/children").read_text().split())
    return children


def _state(pid: int) -> str:
    """The one-letter state of /proc/PID/stat ('' when the process is gone)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return ""


def _reap_later(popen: subprocess.Popen[bytes]) -> None:
    try:
        popen.wait(timeout=5)
    except subprocess.TimeoutExpired:
        log.warning("bwrap %d did not exit after SIGKILL", popen.pid)
    for f in (popen.stdin, popen.stdout, popen.stderr):
        if f is not None:
            f.close()
