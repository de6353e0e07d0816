"""Processes of a state directory that outlived their daemon: finding them, proving it, killing them.

The kernel ties a daemon's children to it (death signals down bwrap's chain, pid namespaces;
see appliance.sandbox.process), with one gap: bwrap's sandbox process arms its death signal
only after its start-up handshake, and one whose daemon died in that window waits forever. The
janitor (appliance.host.janitor) and every daemon start look here for such processes, and
`appliance doctor` reports them.

A process is only ever taken for one of this state directory's when its own /proc entry proves
it, by one of:
- a bwrap (its program has not started yet) whose arguments bind a workspace that lies directly
  in `<state>/sandboxes` to /workspace;
- the first process of a sandbox (pid 1 of a pid namespace other than ours) whose working
  directory is one of those workspaces;
- a process whose environment carries `APPLIANCE_STATE_DIR=<state>`, which the daemon gives its
  long-lived children (model workers, the grammar checker, the workspace mount holder).
Its pid and start time are recorded together, and it is killed through a pidfd opened after the
start time was checked again, so a pid reused meanwhile is never hit. Callers make sure no live
daemon uses the state directory (the janitor's lock), since its children would match too.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from appliance.config import STATE_DIR_ENV

log = logging.getLogger("appliance.lifecycle")

WORKSPACE = "/workspace"
"""Where a sandbox sees its workspace (appliance.sandbox.policy.WORKSPACE)."""


@dataclass(frozen=True)
class Leftover:
    pid: int
    start_ticks: int
    """Field 22 of /proc/PID/stat: with the pid, it names one process for good."""
    kind: Literal["sandbox", "worker"]
    what: str
    """A short description for logs and `appliance doctor`."""


def find_leftovers(state_dir: Path, *, proc: Path = Path("/proc")) -> list[Leftover]:
    """Every live process proven to belong to `state_dir`'s sandboxes or model workers."""
    state = os.path.realpath(state_dir)
    root = os.path.join(state, "sandboxes")
    marker = f"{STATE_DIR_ENV}={state}".encode()
    workspaces = _workspace_inodes(Path(root))
    own_pidns = _pidns(proc / "self")
    found: list[Leftover] = []
    for entry in os.listdir(proc):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        base = proc / entry
        ticks, state_letter = _stat(base)
        if ticks is None or state_letter in ("Z", "X"):
            continue
        what = _sandbox_bwrap(base, root) or _sandbox_init(base, workspaces, own_pidns)
        kind: Literal["sandbox", "worker"] = "sandbox"
        if what is None and _has_env(base, marker):
            kind, what = "worker", "daemon child: " + _command(base)
        if what is not None:
            found.append(Leftover(int(entry), ticks, kind, what))
    return found


def kill_leftovers(found: list[Leftover], *, wait_s: float = 5.0) -> list[Leftover]:
    """SIGKILL each (if it is still the same process) and wait for them; returns those killed."""
    pidfds: dict[int, Leftover] = {}
    for lo in found:
        try:
            fd = os.pidfd_open(lo.pid)
        except OSError:
            continue  # gone already
        if _stat(Path(f"/proc/{lo.pid}"))[0] != lo.start_ticks:
            os.close(fd)  # the pid now names another process
            continue
        try:
            signal.pidfd_send_signal(fd, signal.SIGKILL)
        except ProcessLookupError:
            os.close(fd)
            continue
        pidfds[fd] = lo
    killed = list(pidfds.values())
    poller = select.poll()
    for fd in pidfds:
        poller.register(fd, select.POLLIN)
    deadline = time.monotonic() + wait_s
    while pidfds and time.monotonic() < deadline:
        for fd, _ in poller.poll(max(1, int((deadline - time.monotonic()) * 1000))):
            poller.unregister(fd)
            os.close(fd)
            pidfds.pop(fd, None)
    for fd, lo in pidfds.items():
        log.warning(
            "a leftover process did not end after SIGKILL",
            extra={"fields": {"pid": lo.pid, "what": lo.what}},
        )
        os.close(fd)
    return killed


def sweep(state_dir: Path, *, reason: str) -> list[Leftover]:
    """Find and kill what earlier daemons of `state_dir` left running, logging each one."""
    killed = kill_leftovers(find_leftovers(state_dir))
    for lo in killed:
        log.warning(
            "killed a process left behind",
            extra={"fields": {"reason": reason, "pid": lo.pid, "kind": lo.kind, "what": lo.what}},
        )
    return killed


# --- reading /proc -------------------------------------------------------------------------


def _stat(base: Path) -> tuple[int | None, str]:
    """(start time in clock ticks, state letter) of /proc/PID, or (None, '')."""
    try:
        fields = (base / "stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[19]), fields[0]
    except (OSError, IndexError, ValueError):
        return None, ""


def _argv(base: Path) -> list[str]:
    try:
        raw = (base / "cmdline").read_bytes()
    except OSError:
        return []
    return [a.decode(errors="replace") for a in raw.split(b"\0")[:-1]]


def _command(base: Path, limit: int = 120) -> str:
    return " ".join(_argv(base))[:limit]


def _sandbox_bwrap(base: Path, root: str) -> str | None:
    """'bwrap of <workspace>' when this is a bwrap binding a workspace of `root` to /workspace."""
    argv = _argv(base)
    if not argv or os.path.basename(argv[0]) != "bwrap":
        return None
    for i in range(len(argv) - 2):
        if argv[i] == "--bind" and argv[i + 2] == WORKSPACE:
            source = argv[i + 1]
            if os.path.realpath(os.path.dirname(source)) == root:
                return f"bwrap of {os.path.basename(source)}"
    return None


def _workspace_inodes(root: Path) -> dict[tuple[int, int], str]:
    out: dict[tuple[int, int], str] = {}
    with contextlib.suppress(OSError):
        for entry in os.scandir(root):
            with contextlib.suppress(OSError):
                st = entry.stat(follow_symlinks=False)
                out[(st.st_dev, st.st_ino)] = entry.name
    return out


def _pidns(base: Path) -> str:
    try:
        return os.readlink(base / "ns" / "pid")
    except OSError:
        return ""


def _sandbox_init(base: Path, workspaces: dict[tuple[int, int], str], own_pidns: str) -> str | None:
    """'sandbox <workspace>: <command>' for pid 1 of another pid namespace working in a workspace."""
    if not workspaces:
        return None
    try:
        nspid = next(
            line.split()[1:]
            for line in (base / "status").read_text().splitlines()
            if line.startswith("NSpid:")
        )
    except (OSError, StopIteration):
        return None
    if len(nspid) < 2 or nspid[-1] != "1" or _pidns(base) in ("", own_pidns):
        return None
    try:
        st = os.stat(base / "cwd")
    except OSError:
        return None
    name = workspaces.get((st.st_dev, st.st_ino))
    return None if name is None else f"sandbox {name}: {_command(base)}"


def _has_env(base: Path, marker: bytes) -> bool:
    try:
        return marker in (base / "environ").read_bytes().split(b"\0")
    except OSError:
        return False
