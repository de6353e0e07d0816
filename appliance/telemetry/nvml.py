"""NVIDIA GPU access through NVML (the nvidia-ml-py package, imported as pynvml).

`Nvml.open()` returns None when there is no driver, so every caller has one plain check for
"no GPU here". The library object can be replaced in tests by a fake with the same functions.

`gpus()` reads everything `GET /api/gpu` and the GPU gauges show, one `GpuStatus` per device. A
figure the device does not support (power on a consumer card, the energy counter before Volta)
is None rather than an error: one missing sensor must not hide the others.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, TypeVar

log = logging.getLogger("appliance.nvml")

T = TypeVar("T")

# NVML's clock-event ("throttle") reason bits, as documented for
# nvmlDeviceGetCurrentClocksEventReasons; named the way people search for them.
THROTTLE_REASONS: dict[int, str] = {
    0x1: "gpu_idle",
    0x2: "applications_clocks_setting",
    0x4: "sw_power_cap",
    0x8: "hw_slowdown",
    0x10: "sync_boost",
    0x20: "sw_thermal_slowdown",
    0x40: "hw_thermal_slowdown",
    0x80: "hw_power_brake_slowdown",
    0x100: "display_clock_setting",
}

_TEMPERATURE_GPU = 0
_CLOCK_GRAPHICS, _CLOCK_SM, _CLOCK_MEM = 0, 1, 2


def throttle_reason_names(mask: int) -> list[str]:
    """The names of the reasons set in an NVML clock-event bitmask (unknown bits as hex)."""
    names = [name for bit, name in THROTTLE_REASONS.items() if mask & bit]
    unknown = mask & ~sum(THROTTLE_REASONS)
    if unknown:
        names.append(f"0x{unknown:x}")
    return names


@dataclass
class GpuProcess:
    pid: int
    memory_bytes: int


@dataclass
class GpuStatus:
    """One device as NVML sees it now. None means the device does not report that figure."""

    index: int
    name: str
    uuid: str | None = None
    utilization_percent: float | None = None
    """Share of the last sample period a kernel was running."""
    memory_utilization_percent: float | None = None
    memory_used_bytes: int | None = None
    memory_total_bytes: int | None = None
    power_watts: float | None = None
    power_limit_watts: float | None = None
    temperature_c: float | None = None
    clocks_mhz: dict[str, int] = field(default_factory=dict)
    """Current graphics, sm and memory clocks."""
    max_clocks_mhz: dict[str, int] = field(default_factory=dict)
    throttle_reasons: list[str] = field(default_factory=list)
    energy_joules: float | None = None
    """Energy used since the driver was loaded (NVML's total energy counter)."""
    processes: list[GpuProcess] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


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

    @staticmethod
    def why_unavailable(lib: Any | None = None) -> str:
        """A sentence saying why `open` returned None, for people reading /api/gpu or doctor."""
        if lib is None:
            try:
                import pynvml
            except ImportError:
                return "the nvidia-ml-py package is not installed"
            lib = pynvml
        try:
            lib.nvmlInit()
            count = lib.nvmlDeviceGetCount()
        except Exception as exc:
            return f"no NVIDIA driver found (NVML could not be initialised: {exc})"
        return "NVML found no GPU" if count < 1 else "NVML is available"

    @staticmethod
    def _optional(fn: Callable[..., T], *args: Any) -> T | None:
        """fn(*args), or None when the device does not support it (or the call fails)."""
        try:
            return fn(*args)
        except Exception:
            return None

    def device_count(self) -> int:
        with self._lock:
            return int(self.lib.nvmlDeviceGetCount())

    def driver_version(self) -> str | None:
        with self._lock:
            v = self._optional(self.lib.nvmlSystemGetDriverVersion)
        return _text(v) if v is not None else None

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
                for proc in self._processes(self.lib.nvmlDeviceGetHandleByIndex(i)):
                    out[proc.pid] = out.get(proc.pid, 0) + proc.memory_bytes
        return out

    def energy_joules(self) -> float | None:
        """The total energy counter of all devices, in joules; None if no device has one."""
        with self._lock:
            readings = [
                self._optional(
                    self.lib.nvmlDeviceGetTotalEnergyConsumption,
                    self.lib.nvmlDeviceGetHandleByIndex(i),
                )
                for i in range(self.lib.nvmlDeviceGetCount())
            ]
        known = [int(r) for r in readings if r is not None]
        return sum(known) / 1000.0 if known else None

    def gpus(self) -> list[GpuStatus]:
        """Every device's figures now (a few dozen NVML calls: call it off the event loop)."""
        with self._lock:
            return [self._status(i) for i in range(self.lib.nvmlDeviceGetCount())]

    # --- one device ---------------------------------------------------------------------------

    def _processes(self, handle: Any) -> list[GpuProcess]:
        procs = self._optional(self.lib.nvmlDeviceGetComputeRunningProcesses, handle) or []
        return [GpuProcess(int(p.pid), int(getattr(p, "usedGpuMemory", None) or 0)) for p in procs]

    def _throttle(self, handle: Any) -> list[str]:
        for name in (
            "nvmlDeviceGetCurrentClocksEventReasons",
            "nvmlDeviceGetCurrentClocksThrottleReasons",
        ):
            fn = getattr(self.lib, name, None)
            if fn is not None:
                mask = self._optional(fn, handle)
                if mask is not None:
                    return throttle_reason_names(int(mask))
        return []

    def _status(self, index: int) -> GpuStatus:
        lib = self.lib
        h = lib.nvmlDeviceGetHandleByIndex(index)
        opt = self._optional
        name = opt(lib.nvmlDeviceGetName, h)
        uuid = opt(lib.nvmlDeviceGetUUID, h)
        util = opt(lib.nvmlDeviceGetUtilizationRates, h)
        mem = opt(lib.nvmlDeviceGetMemoryInfo, h)
        power_mw = opt(lib.nvmlDeviceGetPowerUsage, h)
        limit_mw = opt(lib.nvmlDeviceGetEnforcedPowerLimit, h)
        temp = opt(lib.nvmlDeviceGetTemperature, h, _TEMPERATURE_GPU)
        energy_mj = opt(lib.nvmlDeviceGetTotalEnergyConsumption, h)
        clocks: dict[str, int] = {}
        max_clocks: dict[str, int] = {}
        for label, kind in (
            ("graphics", _CLOCK_GRAPHICS),
            ("sm", _CLOCK_SM),
            ("memory", _CLOCK_MEM),
        ):
            now = opt(lib.nvmlDeviceGetClockInfo, h, kind)
            top = opt(lib.nvmlDeviceGetMaxClockInfo, h, kind)
            if now is not None:
                clocks[label] = int(now)
            if top is not None:
                max_clocks[label] = int(top)
        return GpuStatus(
            index=index,
            name=_text(name) if name is not None else f"GPU {index}",
            uuid=_text(uuid) if uuid is not None else None,
            utilization_percent=float(util.gpu) if util is not None else None,
            memory_utilization_percent=float(util.memory) if util is not None else None,
            memory_used_bytes=int(mem.used) if mem is not None else None,
            memory_total_bytes=int(mem.total) if mem is not None else None,
            power_watts=power_mw / 1000.0 if power_mw is not None else None,
            power_limit_watts=limit_mw / 1000.0 if limit_mw is not None else None,
            temperature_c=float(temp) if temp is not None else None,
            clocks_mhz=clocks,
            max_clocks_mhz=max_clocks,
            throttle_reasons=self._throttle(h),
            energy_joules=energy_mj / 1000.0 if energy_mj is not None else None,
            processes=self._processes(h),
        )
