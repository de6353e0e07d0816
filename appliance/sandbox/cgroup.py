"""Per-sandbox cgroups, when the daemon owns a delegated cgroup v2 subtree.

Under systemd with `Delegate=yes` (or any cgroup v2 subtree the daemon may write), each sandbox
gets its own child cgroup with memory.max (and no swap) and pids.max. That is stricter and more
precise than rlimits: memory counts what the program really uses, the OOM kill is recorded in
memory.events, and memory.peak gives the peak. Without delegation (cgroup v1 hosts, containers,
a plain shell) `CgroupDelegate.detect` returns None and the runner falls back to RLIMIT_AS and
RLIMIT_NPROC.

Preparing the subtree follows cgroup v2's "no internal processes" rule: the daemon's own
processes move into a `daemon` leaf, then the memory and pids controllers are enabled for the
children, and sandboxes live under `sandboxes/`.

A sandbox's tmpfs pages (its /tmp and /dev/shm, and its workspace when quotas are enforced) are
charged to the cgroup of the process that writes them, so memory.max is the program's memory_mb
plus those tmpfs sizes: files never eat into the memory a program asked for, and the total is
what admission reserved for the sandbox.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from appliance.sandbox.limits import MiB, SandboxLimits

log = logging.getLogger("appliance.sandbox")

NEEDED = ("memory", "pids")


def own_cgroup(proc_self_cgroup: Path = Path("/proc/self/cgroup")) -> str | None:
    """The daemon's cgroup v2 path ('0::/...' line), or None on a pure v1 host."""
    try:
        for line in proc_self_cgroup.read_text().splitlines():
            if line.startswith("0::"):
                return line[3:]
    except OSError:
        return None
    return None


def _controllers(path: Path) -> set[str]:
    try:
        return set((path / "cgroup.controllers").read_text().split())
    except OSError:
        return set()


@dataclass
class CgroupSlot:
    path: Path
    tmpfs_mb: int = 0
    """The sandbox's tmpfs sizes, allowed on top of memory_mb (see the module docstring)."""

    def attach(self, pid: int) -> None:
        (self.path / "cgroup.procs").write_text(str(pid))

    def _events(self, name: str) -> dict[str, int]:
        try:
            pairs = (line.split() for line in (self.path / name).read_text().splitlines())
            return {k: int(v) for k, v in pairs}
        except (OSError, ValueError):
            return {}

    def oom_killed(self) -> bool:
        return self._events("memory.events").get("oom_kill", 0) > 0

    def pids_max_hit(self) -> bool:
        return self._events("pids.events").get("max", 0) > 0

    def peak_mb(self) -> float | None:
        try:
            return int((self.path / "memory.peak").read_text()) / MiB
        except (OSError, ValueError):
            return None

    def update(self, limits: SandboxLimits) -> None:
        (self.path / "memory.max").write_text(str((limits.memory_mb + self.tmpfs_mb) * MiB))
        (self.path / "pids.max").write_text(str(limits.nproc))

    def remove(self) -> None:
        try:
            self.path.rmdir()
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("cannot remove cgroup %s: %s", self.path, exc)


class CgroupDelegate:
    def __init__(self, sandboxes: Path) -> None:
        self.sandboxes = sandboxes

    @classmethod
    def detect(
        cls,
        *,
        mount: Path = Path("/sys/fs/cgroup"),
        proc_self_cgroup: Path = Path("/proc/self/cgroup"),
    ) -> CgroupDelegate | None:
        rel = own_cgroup(proc_self_cgroup)
        if rel is None:
            return None
        base = mount / rel.lstrip("/")
        if base.name == "daemon" and (base.parent / "sandboxes").is_dir():
            base = base.parent  # prepared by an earlier start of this daemon
        if not all(c in _controllers(base) for c in NEEDED):
            return None
        if not (
            os.access(base / "cgroup.subtree_control", os.W_OK)
            and os.access(base / "cgroup.procs", os.W_OK)
        ):
            return None
        try:
            return cls(cls._prepare(base))
        except OSError as exc:
            log.info("cgroup v2 delegation at %s is not usable (%s); using rlimits", base, exc)
            return None

    @staticmethod
    def _prepare(base: Path) -> Path:
        daemon = base / "daemon"
        daemon.mkdir(exist_ok=True)
        procs = [p for p in (base / "cgroup.procs").read_text().split() if p]
        for pid in procs:
            try:
                (daemon / "cgroup.procs").write_text(pid)
            except ProcessLookupError:
                continue
        control = " ".join(f"+{c}" for c in NEEDED)
        (base / "cgroup.subtree_control").write_text(control)
        sandboxes = base / "sandboxes"
        sandboxes.mkdir(exist_ok=True)
        (sandboxes / "cgroup.subtree_control").write_text(control)
        return sandboxes

    def slot(self, name: str, limits: SandboxLimits, tmpfs_mb: int = 0) -> CgroupSlot:
        path = self.sandboxes / name
        path.mkdir()
        swap = path / "memory.swap.max"
        if swap.exists():
            swap.write_text("0")
        slot = CgroupSlot(path, tmpfs_mb)
        slot.update(limits)
        return slot
