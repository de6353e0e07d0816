"""CPU and RAM figures of the host and of single processes, from psutil.

These are what `GET /api/gpu` reports next to (or, without an NVIDIA driver, instead of) the GPU
figures, what the host gauges of `/metrics` show, and how the memory and CPU time of a model
worker are read. Everything here is cheap and non-blocking: `cpu_percent` compares against the
previous call instead of sleeping for a sample.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import Any

import psutil


@dataclass
class HostStatus:
    cpu_count: int
    cpu_percent: float
    """Whole-host CPU use since the previous call (0 on the first call)."""
    load_average: tuple[float, float, float]
    memory_total_bytes: int
    memory_available_bytes: int
    memory_used_bytes: int
    swap_used_bytes: int
    daemon_rss_bytes: int
    daemon_cpu_seconds: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ProcessStatus:
    pid: int
    rss_bytes: int
    cpu_seconds: float
    """User plus system CPU time of the process and its waited-for children."""


def host_status() -> HostStatus:
    vm = psutil.virtual_memory()
    me = psutil.Process()
    times = me.cpu_times()
    try:
        load = os.getloadavg()
    except OSError:
        load = (0.0, 0.0, 0.0)
    return HostStatus(
        cpu_count=psutil.cpu_count() or 1,
        cpu_percent=float(psutil.cpu_percent(interval=None)),
        load_average=(float(load[0]), float(load[1]), float(load[2])),
        memory_total_bytes=int(vm.total),
        memory_available_bytes=int(vm.available),
        memory_used_bytes=int(vm.total - vm.available),
        swap_used_bytes=int(psutil.swap_memory().used),
        daemon_rss_bytes=int(me.memory_info().rss),
        daemon_cpu_seconds=float(times.user + times.system),
    )


def process_status(pid: int) -> ProcessStatus | None:
    """One process's memory and CPU time; None when it is gone or not ours to read."""
    try:
        proc = psutil.Process(pid)
        with proc.oneshot():
            t = proc.cpu_times()
            return ProcessStatus(
                pid=pid,
                rss_bytes=int(proc.memory_info().rss),
                cpu_seconds=float(t.user + t.system + t.children_user + t.children_system),
            )
    except psutil.Error:
        return None
