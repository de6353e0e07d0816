"""Resource limits of one sandboxed run, and how they become kernel limits.

Three layers meet here: the defaults of a language profile (`ProfileLimits`, read from TOML), what
a request asks for (timeout, memory) bounded by the daemon's maxima, and the kernel knobs that
enforce the result (`rlimits_for`: RLIMIT_CPU/AS/NPROC/FSIZE/NOFILE/CORE, or cgroup v2 values
when the daemon has a delegated cgroup). All of it is pure so unit tests can read it.
"""

from __future__ import annotations

import math
import re
import resource
from dataclasses import dataclass, replace

import msgspec

from appliance.errors import InvalidRequest

MiB = 1024 * 1024


class ProfileLimits(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, omit_defaults=True):
    """Limits as written in a profile's [limits] or [compile_limits] table; unset keys inherit."""

    timeout_s: float | None = None
    """Wall-clock seconds before the whole process tree is killed."""
    cpu_s: float | None = None
    """CPU seconds (RLIMIT_CPU); defaults to the timeout."""
    memory_mb: int | None = None
    """Memory of the program (cgroup memory.max, else RLIMIT_AS plus address_space_extra_mb)."""
    address_space_extra_mb: int | None = None
    """Virtual memory a runtime reserves beyond what it uses (V8, the JVM); only for RLIMIT_AS."""
    nproc: int | None = None
    """Processes and threads the sandbox may have at once (fork bombs stop here)."""
    file_size_mb: int | None = None
    """Largest file the program may write (RLIMIT_FSIZE)."""
    workspace_mb: int | None = None
    """Total size of the workspace directory."""
    tmp_mb: int | None = None
    """Size of the sandbox's private /tmp (a tmpfs)."""
    output_kb: int | None = None
    """Bytes kept per output stream (stdout, stderr); more is dropped and flagged as truncated."""
    nofile: int | None = None
    """Open file descriptors (RLIMIT_NOFILE)."""


@dataclass(frozen=True)
class SandboxLimits:
    """Fully resolved limits of one run."""

    timeout_s: float = 10.0
    cpu_s: float | None = None
    memory_mb: int = 256
    address_space_extra_mb: int = 64
    nproc: int = 64
    file_size_mb: int = 64
    workspace_mb: int = 256
    tmp_mb: int = 64
    output_kb: int = 1024
    nofile: int = 256

    @property
    def cpu_seconds(self) -> float:
        return self.cpu_s if self.cpu_s is not None else self.timeout_s

    @property
    def output_bytes(self) -> int:
        return self.output_kb * 1024

    @property
    def heap_mb(self) -> int:
        """Heap size for runtimes that need one spelled out (-Xmx): three fifths of memory_mb."""
        return max(16, self.memory_mb * 3 // 5)

    def merged(self, layer: ProfileLimits | None) -> SandboxLimits:
        """These limits with every key `layer` sets replaced."""
        if layer is None:
            return self
        changes = {k: v for k, v in msgspec.structs.asdict(layer).items() if v is not None}
        return replace(self, **changes)


DEFAULT_LIMITS = SandboxLimits()
DEFAULT_COMPILE_LIMITS = SandboxLimits(timeout_s=60.0, memory_mb=1024, address_space_extra_mb=1024)


@dataclass(frozen=True)
class LimitCeiling:
    """The most any request may ask for (from the daemon's config)."""

    max_timeout_s: float
    max_memory_mb: int


def apply_request(
    base: SandboxLimits,
    *,
    timeout_s: float | None,
    memory_mb: int | None,
    ceiling: LimitCeiling,
) -> SandboxLimits:
    """The profile's limits with a request's overrides, refusing values out of range."""
    changes: dict[str, float | int | None] = {}
    if timeout_s is not None:
        if not (0 < timeout_s <= ceiling.max_timeout_s) or math.isnan(timeout_s):
            raise InvalidRequest(
                f"timeout_s must be above 0 and at most {ceiling.max_timeout_s:g} seconds "
                f"(got {timeout_s:g}); the daemon's maximum is sandbox.max_timeout_s",
                param="timeout_s",
            )
        changes["timeout_s"] = timeout_s
        changes["cpu_s"] = None
    if memory_mb is not None:
        if not (16 <= memory_mb <= ceiling.max_memory_mb):
            raise InvalidRequest(
                f"memory_mb must be between 16 and {ceiling.max_memory_mb} (got {memory_mb}); "
                "the daemon's maximum is sandbox.max_memory_mb",
                param="memory_mb",
            )
        changes["memory_mb"] = memory_mb
    return replace(base, **changes) if changes else base  # type: ignore[arg-type]


Rlimits = dict[int, tuple[int, int]]


def rlimits_for(limits: SandboxLimits, *, cgroup: bool = False, cpu_used_s: float = 0.0) -> Rlimits:
    """Kernel resource limits that enforce `limits` on the sandbox's first process.

    With a delegated cgroup, memory and process counts are the cgroup's job (memory.max and
    pids.max), so RLIMIT_AS and RLIMIT_NPROC are left alone. `cpu_used_s` is CPU time the process
    already spent (a pre-started interpreter) and is added so the program gets its full budget.
    """
    cpu = math.ceil(cpu_used_s + limits.cpu_seconds)
    out: Rlimits = {
        resource.RLIMIT_CPU: (cpu, cpu + 1),
        resource.RLIMIT_FSIZE: (limits.file_size_mb * MiB, limits.file_size_mb * MiB),
        resource.RLIMIT_NOFILE: (limits.nofile, limits.nofile),
        resource.RLIMIT_CORE: (0, 0),
    }
    if not cgroup:
        address_space = (limits.memory_mb + limits.address_space_extra_mb) * MiB
        out[resource.RLIMIT_AS] = (address_space, address_space)
        out[resource.RLIMIT_NPROC] = (limits.nproc, limits.nproc)
    return out


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*$", re.I)
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$", re.I)


def parse_size_mb(text: str) -> int:
    """'512', '512M', '2G', '1.5GiB', '800k' -> MiB (plain numbers are MiB)."""
    m = _SIZE.match(text)
    if not m:
        raise InvalidRequest(f"cannot read {text!r} as a size; write it like 512M or 2G")
    value, unit = float(m.group(1)), m.group(2).lower()
    factor = {"": 1.0, "k": 1 / 1024, "m": 1.0, "g": 1024.0, "t": 1024.0 * 1024}[unit]
    mb = math.ceil(value * factor)
    if mb <= 0:
        raise InvalidRequest(f"size {text!r} is below 1 MiB; give at least 1M")
    return mb


def parse_duration_s(text: str) -> float:
    """'10', '10s', '1.5m', '250ms', '1h' -> seconds (plain numbers are seconds)."""
    m = _DURATION.match(text)
    if not m:
        raise InvalidRequest(f"cannot read {text!r} as a duration; write it like 10s, 250ms or 2m")
    value, unit = float(m.group(1)), (m.group(2) or "s").lower()
    seconds = value * {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}[unit]
    if seconds <= 0:
        raise InvalidRequest(f"duration {text!r} must be above zero")
    return seconds
