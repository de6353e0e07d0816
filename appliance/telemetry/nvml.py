"""NVIDIA GPU access through NVML (the nvidia-ml-py package, imported as pynvml).

`Nvml.open()` returns None when there is no driver, so every caller has one plain check for
"no GPU here". The library object can be replaced in tests by a fake with the same functions.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

log = logging.getLogger("appliance.nvml")


class Nvml:
    def __init__(self, lib: Any) -> None:
        self.lib = lib
        self._lock = threading.Lock()

    @classmethod
    def open(cls, lib: Any | None = None) -> Nvml | None:
        """Initialise NVML; None if there is no NVIDIA driver (or no pynvml)."""
        if lib is None:
            try:
                import pynvml
            except ImportError:
                return None
            lib = pynvml
        try:
            lib.nvmlInit()
            if lib.nvmlDeviceGetCount() < 1:
                return None
        except Exception as exc:  # pynvml.NVMLError and friends: no driver, no device
            log.debug("NVML unavailable: %s", exc)
            return None
        return cls(lib)

    def device_count(self) -> int:
        with self._lock:
            return int(self.lib.nvmlDeviceGetCount())

    def total_memory(self) -> int:
        with self._lock:
            return sum(
                int(self.lib.nvmlDeviceGetMemoryInfo(self.lib.nvmlDeviceGetHandleByIndex(i)).total)
                for i in range(self.lib.nvmlDeviceGetCount())
            )

    def free_memory(self) -> int:
        with self._lock:
            return sum(
                int(self.lib.nvmlDeviceGetMemoryInfo(self.lib.nvmlDeviceGetHandleByIndex(i)).free)
                for i in range(self.lib.nvmlDeviceGetCount())
            )

    def process_memory(self) -> dict[int, int]:
        """GPU memory in bytes used by each process (all devices), by pid."""
        out: dict[int, int] = {}
        with self._lock:
            for i in range(self.lib.nvmlDeviceGetCount()):
                h = self.lib.nvmlDeviceGetHandleByIndex(i)
                try:
                    procs = self.lib.nvmlDeviceGetComputeRunningProcesses(h)
                except Exception:
                    continue
                for pr in procs:
                    used = getattr(pr, "usedGpuMemory", None) or 0
                    out[int(pr.pid)] = out.get(int(pr.pid), 0) + int(used)
        return out
