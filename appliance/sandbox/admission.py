"""Admission of sandboxes against a memory budget, with a share kept for agents.

Every sandbox that runs code reserves its worst case before it starts: its memory limit plus the
tmpfs it may fill (/tmp and /dev/shm, `tmp_mb` each, and its workspace when workspaces are
tmpfs, quota.py), and for a compiled language the compile step when that needs more. The
reservations together never exceed the budget: `sandbox.memory_budget_mb`, or when that is 0,
half of the memory the kernel gives this daemon (MemTotal, or its cgroup's limit when lower). A
sandbox that would pass it is refused with 503 and Retry-After; one that could never fit, even
alone, with 507.

Who counts: one-shot runs while they run (from the moment they have a run slot), stateful
sandboxes from creation to deletion (their interpreter and workspace hold memory between
execs). Idle warm-pool sandboxes do not: no code has run in them and their tmpfs are empty, so
each holds one waiting interpreter (tens of MB), bounded by the pool's configured size, and the
owner that takes one is admitted before it does, for the limits it runs under.

Owners are API clients and agents (the `run_code` tool of sessions). A share of the budget and of
the stateful-sandbox count (`sandbox.agent_reserve_fraction`) is kept for agents: clients
together never hold more than the rest, so a client holding all it may still leaves the coder
agent room for its sandbox. Agents may use the whole budget.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from appliance.errors import InsufficientMemory
from appliance.sandbox.cgroup import own_cgroup
from appliance.sandbox.errors import SandboxLimitReached, SandboxMemoryFull
from appliance.sandbox.limits import SandboxLimits

Owner = Literal["client", "agent"]

HOST_SHARE = 0.5
"""Of the daemon's memory, the share sandboxes may reserve when no budget is configured; the
rest is for models, the daemon and the host."""
RUN_RETRY_S = 5
"""Retry-After for a one-shot run: runs end within their timeout."""
SANDBOX_RETRY_S = 30
"""Retry-After for a stateful sandbox: they end when deleted or reaped."""


def footprint_mb(
    limits: SandboxLimits, *, workspace_in_ram: bool, compile_limits: SandboxLimits | None = None
) -> int:
    """The most memory one sandbox (its program, or its compile step) can hold at once."""
    steps = [limits, *([compile_limits] if compile_limits is not None else [])]
    process = max(s.memory_mb + 2 * s.tmp_mb for s in steps)
    workspace = max(s.workspace_mb for s in steps) if workspace_in_ram else 0
    return process + workspace


def host_memory_mb(
    meminfo: Path = Path("/proc/meminfo"),
    cgroup_root: Path = Path("/sys/fs/cgroup"),
    proc_self_cgroup: Path = Path("/proc/self/cgroup"),
) -> int:
    """The memory this daemon may use: MemTotal, or its cgroup's limit when that is lower."""
    total = 0
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemTotal:"):
                total = int(line.split()[1]) // 1024
    except (OSError, ValueError, IndexError):
        pass
    limits = [total] if total else []
    rel = own_cgroup(proc_self_cgroup)
    candidates = [cgroup_root / "memory" / "memory.limit_in_bytes"]  # v1, as seen from inside
    if rel is not None:
        candidates.insert(0, cgroup_root / rel.lstrip("/") / "memory.max")
    for path in candidates:
        try:
            value = path.read_text().strip()
        except OSError:
            continue
        if value.isdigit() and int(value) < (1 << 60):
            limits.append(int(value) // (1024 * 1024))
    return min(limits) if limits else 4096


@dataclass(frozen=True)
class Reservation:
    owner: Owner
    mb: int
    stateful: bool


class SandboxAdmission:
    """The reservations of every sandbox running code, by owner; admits or refuses new ones."""

    def __init__(self, budget_mb: int, *, agent_share: float, max_stateful: int) -> None:
        self.budget_mb = budget_mb
        self.agent_share = agent_share
        self.max_stateful = max_stateful
        self._held: dict[Owner, list[int]] = {"client": [0, 0], "agent": [0, 0]}
        """owner -> [MB reserved, stateful sandboxes]"""

    @property
    def client_budget_mb(self) -> int:
        return self.budget_mb - math.ceil(self.budget_mb * self.agent_share)

    @property
    def client_max_stateful(self) -> int:
        return self.max_stateful - math.floor(self.max_stateful * self.agent_share)

    @property
    def reserved_mb(self) -> int:
        return sum(mb for mb, _ in self._held.values())

    def stateful(self, owner: Owner | None = None) -> int:
        owners = [owner] if owner else list(self._held)
        return sum(self._held[o][1] for o in owners)

    def admit(self, mb: int, owner: Owner, *, stateful: bool) -> Reservation:
        """Reserve `mb` for a sandbox of `owner`, or raise why it cannot run now (or ever)."""
        what = "a stateful sandbox" if stateful else "this run"
        ceiling = self.budget_mb if owner == "agent" else self.client_budget_mb
        if mb > ceiling:
            raise InsufficientMemory(
                f"{what} needs {mb} MB (memory_mb + its tmpfs: workspace, /tmp, /dev/shm), more "
                f"than the {ceiling} MB sandboxes of {'agents' if owner == 'agent' else 'API clients'} "
                "may hold at all; ask for less memory_mb, or an operator can raise "
                "sandbox.memory_budget_mb",
                code="sandbox_too_large",
            )
        if stateful:
            self._check_count(owner)
        held_by_owner = self._held[owner][0] if owner == "client" else self.reserved_mb
        if held_by_owner + mb > ceiling or self.reserved_mb + mb > self.budget_mb:
            free = min(ceiling - held_by_owner, self.budget_mb - self.reserved_mb)
            kept = (
                f" ({self.budget_mb - self.client_budget_mb} MB of it are kept for agents)"
                if owner == "client"
                else ""
            )
            raise SandboxMemoryFull(
                f"the sandbox memory budget is taken: {what} needs {mb} MB and {max(0, free)} MB "
                f"of the {self.budget_mb} MB budget are free{kept}. Retry shortly, delete idle "
                "sandboxes (DELETE /api/sandboxes/{id}) or ask for less memory_mb; an operator "
                "can raise sandbox.memory_budget_mb",
                retry_after=SANDBOX_RETRY_S if stateful else RUN_RETRY_S,
            )
        self._held[owner][0] += mb
        self._held[owner][1] += int(stateful)
        return Reservation(owner, mb, stateful)

    def _check_count(self, owner: Owner) -> None:
        if self.stateful() >= self.max_stateful:
            raise SandboxLimitReached(
                f"{self.max_stateful} sandboxes exist already; delete one (DELETE "
                "/api/sandboxes/{id}) or raise sandbox.max_sandboxes",
                retry_after=SANDBOX_RETRY_S,
            )
        if owner == "client" and self.stateful("client") >= self.client_max_stateful:
            raise SandboxLimitReached(
                f"API clients hold {self.client_max_stateful} sandboxes, all they may: of "
                f"sandbox.max_sandboxes ({self.max_stateful}), "
                f"{self.max_stateful - self.client_max_stateful} are kept for agents "
                "(sandbox.agent_reserve_fraction); delete one (DELETE /api/sandboxes/{id})",
                retry_after=SANDBOX_RETRY_S,
            )

    def release(self, reservation: Reservation) -> None:
        held = self._held[reservation.owner]
        held[0] = max(0, held[0] - reservation.mb)
        held[1] = max(0, held[1] - int(reservation.stateful))

    def stats(self) -> dict[str, int]:
        return {
            "budget_mb": self.budget_mb,
            "reserved_mb": self.reserved_mb,
            "clients_mb": self._held["client"][0],
            "agents_mb": self._held["agent"][0],
            "client_budget_mb": self.client_budget_mb,
        }
