"""The janitor: nothing a daemon starts outlives it, and nothing an earlier daemon left stays.

The kernel ties each sandbox and model worker to the daemon (death signals, pid namespaces), but
bwrap leaves a gap: its sandbox process arms its death signal only after the start-up handshake,
so one whose daemon dies in that window waits forever (see appliance.host.leftovers). The
janitor closes it, in three steps:

- `Janitor.start` (the first thing a daemon starts) takes `<state>/daemon.lock`. A live daemon
  holding it makes the start fail: two daemons on one state directory would remove each other's
  workspaces. An earlier daemon's janitor that is still sweeping is waited for.
- It then kills what earlier daemons of this state directory left running, logging each one.
- It starts the watcher, `python -m appliance.host.janitor STATE_DIR`: a small process in
  its own session that holds the read end of a pipe from the daemon and a copy of the lock. The
  pipe ends when the daemon does, whichever way (a clean stop, a crash, SIGKILL); the watcher then
  kills whatever of the state directory still runs, and exits, which releases the lock.

The watcher is not the daemon's child in any way the kernel enforces: it ends because its pipe
did. SIGTERM ends it without a sweep (it would otherwise kill a live daemon's sandboxes); under
systemd the unit's cgroup goes with the service anyway.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from appliance.errors import Conflict
from appliance.host.leftovers import sweep

log = logging.getLogger("appliance.lifecycle")

LOCK_NAME = "daemon.lock"
LOCK_WAIT_S = 5.0
"""How long a start waits for the lock (an earlier daemon's watcher sweeps in well under it)."""
SETTLE_S = 0.25
"""The watcher's pause before its sweep when the daemon died: the kernel's death signals act
first, so the log names only what they could not reach."""
CLEAN_STOP = b"stopped\n"
"""What a daemon that stopped cleanly writes before it closes the pipe (no pause needed then)."""


class Janitor:
    def __init__(
        self, state_dir: Path, *, python: str | None = None, lock_wait_s: float = LOCK_WAIT_S
    ) -> None:
        self.state_dir = state_dir
        self.python = python or sys.executable
        self.lock_wait_s = lock_wait_s
        self._lock_fd = -1
        self._watcher: subprocess.Popen[bytes] | None = None

    async def start(self) -> None:
        self._lock_fd = await asyncio.to_thread(self._take_lock)
        await asyncio.to_thread(sweep, self.state_dir, reason="left by an earlier daemon")
        env = {k: v for k, v in os.environ.items() if not k.startswith("APPLIANCE_TOKEN")}
        try:
            self._watcher = subprocess.Popen(
                [self.python, "-m", "appliance.host.janitor", str(self.state_dir)],
                stdin=subprocess.PIPE,
                pass_fds=(self._lock_fd,),
                start_new_session=True,
                cwd="/",
                env=env,
            )
        except OSError as exc:
            log.warning(
                "no janitor: what a crash leaves running is only removed at the next start",
                extra={"fields": {"error": str(exc)}},
            )

    async def stop(self) -> None:
        """End the watcher (it sweeps once more: normally nothing is left) and free the lock."""
        watcher, self._watcher = self._watcher, None
        if watcher is not None:
            assert watcher.stdin is not None
            with contextlib.suppress(OSError):  # the watcher may have been killed
                watcher.stdin.write(CLEAN_STOP)
            with contextlib.suppress(OSError):
                watcher.stdin.close()
            try:
                await asyncio.to_thread(watcher.wait, 10.0)
            except subprocess.TimeoutExpired:
                watcher.kill()
                await asyncio.to_thread(watcher.wait)
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1

    def _take_lock(self) -> int:
        fd = os.open(self.state_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        deadline = time.monotonic() + self.lock_wait_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    holder = _pid_in(fd)
                    os.close(fd)
                    raise Conflict(
                        f"another appliance daemon (pid {holder or '?'}) is using the state "
                        f"directory {self.state_dir}; stop it first, or give this one its own "
                        "--state-dir"
                    ) from None
                time.sleep(0.05)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        return fd


def lock_holder(state_dir: Path) -> int | None:
    """The pid written by the daemon that holds the state directory's lock (0 if unreadable),
    or None when no daemon (nor its watcher) holds it."""
    try:
        fd = os.open(state_dir / LOCK_NAME, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _pid_in(fd)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def _pid_in(fd: int) -> int:
    try:
        return int(os.pread(fd, 32, 0).split()[0])
    except (OSError, ValueError, IndexError):
        return 0


def main(argv: list[str] | None = None) -> int:
    """The watcher: wait for the daemon's pipe to end, then sweep the state directory."""
    from appliance.telemetry.logs import configure_logging

    args = sys.argv[1:] if argv is None else argv
    state_dir = Path(args[0])
    configure_logging()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the daemon's to handle
    said = b""
    with contextlib.suppress(OSError):
        while chunk := sys.stdin.buffer.read(4096):
            said = (said + chunk)[-len(CLEAN_STOP) :]
    if said != CLEAN_STOP:
        time.sleep(SETTLE_S)
    sweep(state_dir, reason="the daemon ended" if said != CLEAN_STOP else "the daemon stopped")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
