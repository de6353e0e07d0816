"""How much memory models may use, and how much a worker really uses.

On a box with an NVIDIA GPU the budget is GPU memory (NVML); elsewhere it is RAM. The budget is
measured once at start-up (a share of total GPU memory, or of available RAM) unless the config
fixes it. Tests replace the probe with a fake.
"""

from __future__ import annotations

from typing import Protocol

import psutil

from appliance.config import ModelsConfig
from appliance.telemetry.nvml import Nvml


class MemoryProbe(Protocol):
    kind: str  # "gpu" | "ram"

    def budget_bytes(self) -> int: ...

    def process_bytes(self, pid: int) -> int | None: ...


class RamProbe:
    kind = "ram"

    def __init__(self, budget: int) -> None:
        self._budget = budget

    def budget_bytes(self) -> int:
        return self._budget

    def process_bytes(self, pid: int) -> int | None:
        try:
            return int(psutil.Process(pid).memory_info().rss)
        except psutil.Error:
            return None


class GpuProbe:
    kind = "gpu"

    def __init__(self, nvml: Nvml, budget: int) -> None:
        self.nvml = nvml
        self._budget = budget

    def budget_bytes(self) -> int:
        return self._budget

    def process_bytes(self, pid: int) -> int | None:
        return self.nvml.process_memory().get(pid)


def memory_probe_for_host(cfg: ModelsConfig, *, gpu_build: bool | None = None) -> MemoryProbe:
    nvml = Nvml.open() if gpu_build is not False else None
    fixed = cfg.memory_budget_mb * 2**20 if cfg.memory_budget_mb > 0 else None
    if nvml is not None:
        return GpuProbe(nvml, fixed or int(nvml.total_memory() * cfg.memory_fraction))
    return RamProbe(fixed or int(psutil.virtual_memory().available * cfg.memory_fraction))
