"""What a sandboxed run ended as, and the rules that decide it.

`classify` turns the raw facts of a finished process (exit status, whether the daemon killed it
and why, what the cgroup saw, the tail of stderr, the peak memory) into the status a user reads:

- ok: exit code 0.
- error: a non-zero exit, a compile error, a crash (signal).
- timeout: the wall-clock timeout or the CPU-time limit ended it.
- oom: it ran out of its memory limit (cgroup OOM kill, or an allocation failure under
  RLIMIT_AS, recognised by the runtime's message or by peak memory at the limit).
- killed: the daemon stopped it for another limit: endless output, a workspace grown past its
  size, a fork bomb still at the process limit when time ran out.

`reason` says which limit, in words, whenever a limit was involved.
"""

from __future__ import annotations

import signal as signals
from dataclasses import dataclass, field
from typing import Literal

from appliance.sandbox.limits import SandboxLimits

Status = Literal["ok", "error", "timeout", "oom", "killed"]
KillReason = Literal["timeout", "output", "workspace", "deleted"]

GENERIC_OOM_PATTERNS = (
    b"MemoryError",
    b"Cannot allocate memory",
    b"out of memory",
    b"Out of memory",
    b"std::bad_alloc",
    b"memory allocation of",
    b"OutOfMemoryError",
    b"JavaScript heap out of memory",
    b"xmalloc: cannot allocate",
)
FORK_FAILURE_PATTERNS = (
    b"Resource temporarily unavailable",
    b"fork: retry",
    b"BlockingIOError: [Errno 11]",
)


@dataclass
class ProcessFacts:
    """Everything known about a finished process, before classification."""

    returncode: int
    killed_for: KillReason | None = None
    process_limit_hit: bool = False
    cgroup_oom: bool = False
    cgroup_pids_max: bool = False
    peak_memory_mb: float = 0.0
    stderr_tail: bytes = b""


@dataclass
class RunOutcome:
    status: Status
    exit_code: int | None
    signal: int | None
    stdout: bytes
    stderr: bytes
    stdout_truncated: bool
    stderr_truncated: bool
    duration_ms: float
    peak_memory_mb: float
    reason: str | None = None
    cpu_ms: float = 0.0
    phase: Literal["compile", "run"] = "run"
    files: dict[str, bytes] = field(default_factory=dict)
    result: str | None = None
    """REPL cells: the repr of the cell's last expression."""


def _signal_of(code: int) -> int | None:
    return code - 128 if 128 < code <= 128 + 64 else None


def _signame(n: int) -> str:
    try:
        return signals.Signals(n).name
    except ValueError:
        return f"signal {n}"


def classify(
    facts: ProcessFacts, limits: SandboxLimits, oom_patterns: tuple[bytes, ...] = ()
) -> tuple[Status, int | None, int | None, str | None]:
    """(status, exit_code, signal, reason) of a finished process."""
    code = facts.returncode
    sig = _signal_of(code)
    if facts.killed_for == "output":
        return (
            "killed",
            code,
            sig,
            (
                f"output went far beyond the {limits.output_kb} KiB kept per stream; the program "
                "was stopped"
            ),
        )
    if facts.killed_for == "workspace":
        return "killed", code, sig, f"the workspace grew beyond {limits.workspace_mb} MB"
    if facts.killed_for == "deleted":
        return "killed", code, sig, "the sandbox was deleted while the program ran"
    if facts.cgroup_oom:
        return "oom", code, sig, f"out of memory: the limit is {limits.memory_mb} MB"
    if facts.killed_for == "timeout":
        if facts.process_limit_hit or facts.cgroup_pids_max:
            return (
                "killed",
                code,
                sig,
                (
                    f"the process limit ({limits.nproc}) was reached and the program was still "
                    f"running after {limits.timeout_s:g}s: a fork bomb, contained"
                ),
            )
        return "timeout", code, sig, f"wall-clock timeout of {limits.timeout_s:g}s"
    if sig == signals.SIGXCPU:
        return "timeout", code, sig, f"CPU time limit of {limits.cpu_seconds:g}s"
    if sig == signals.SIGXFSZ:
        return (
            "error",
            code,
            sig,
            f"a file grew beyond the {limits.file_size_mb} MB file size limit",
        )
    if code == 0:
        return "ok", 0, None, None
    tail = facts.stderr_tail
    if any(p in tail for p in (*GENERIC_OOM_PATTERNS, *oom_patterns)) or (
        facts.peak_memory_mb >= limits.memory_mb * 0.95
    ):
        return "oom", code, sig, f"out of memory: the limit is {limits.memory_mb} MB"
    if (
        facts.process_limit_hit
        or facts.cgroup_pids_max
        or any(p in tail for p in FORK_FAILURE_PATTERNS)
    ):
        return "error", code, sig, f"the process limit ({limits.nproc}) was reached"
    if sig is not None:
        return "error", code, sig, f"the program was ended by {_signame(sig)}"
    return "error", code, None, None
