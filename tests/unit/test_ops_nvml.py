"""NVML reading with a fake library object, and the no-driver path of this machine."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from appliance.telemetry.nvml import Nvml, throttle_reason_names


class NotSupported(Exception):
    pass


class FakeNvml:
    """Two devices: a datacenter card with every sensor, and a consumer card without power or
    energy readings (NVML raises NotSupported for those)."""

    def __init__(self) -> None:
        self.inits = 0
        self.devices: list[dict[str, Any]] = [
            {
                "name": b"NVIDIA H100",
                "uuid": "GPU-aaa",
                "util": (87, 40),
                "mem": (80 << 30, 20 << 30),
                "power": 312_500,
                "limit": 700_000,
                "temp": 61,
                "clocks": {0: 1755, 1: 1755, 2: 2619},
                "max": {0: 1980, 1: 1980, 2: 2619},
                "throttle": 0x4 | 0x20,
                "energy": 123_456_789,
                "procs": [(4242, 7 << 30), (4343, 1 << 30)],
            },
            {
                "name": "GeForce RTX 3060",
                "uuid": "GPU-bbb",
                "util": (3, 1),
                "mem": (12 << 30, 11 << 30),
                "power": None,
                "limit": None,
                "temp": 40,
                "clocks": {0: 210, 1: 210, 2: 405},
                "max": {},
                "throttle": 0x1,
                "energy": None,
                "procs": [(4242, 512 << 20)],
            },
        ]

    def nvmlInit(self) -> None:
        self.inits += 1

    def nvmlDeviceGetCount(self) -> int:
        return len(self.devices)

    def nvmlDeviceGetHandleByIndex(self, i: int) -> dict[str, Any]:
        return self.devices[i]

    def nvmlSystemGetDriverVersion(self) -> str:
        return "550.54.15"

    def nvmlDeviceGetName(self, h: dict[str, Any]) -> Any:
        return h["name"]

    def nvmlDeviceGetUUID(self, h: dict[str, Any]) -> str:
        return str(h["uuid"])

    def nvmlDeviceGetUtilizationRates(self, h: dict[str, Any]) -> Any:
        return SimpleNamespace(gpu=h["util"][0], memory=h["util"][1])

    def nvmlDeviceGetMemoryInfo(self, h: dict[str, Any]) -> Any:
        total, free = h["mem"]
        return SimpleNamespace(total=total, free=free, used=total - free)

    def _maybe(self, value: Any) -> Any:
        if value is None:
            raise NotSupported("Not Supported")
        return value

    def nvmlDeviceGetPowerUsage(self, h: dict[str, Any]) -> int:
        return int(self._maybe(h["power"]))

    def nvmlDeviceGetEnforcedPowerLimit(self, h: dict[str, Any]) -> int:
        return int(self._maybe(h["limit"]))

    def nvmlDeviceGetTemperature(self, h: dict[str, Any], sensor: int) -> int:
        assert sensor == 0
        return int(h["temp"])

    def nvmlDeviceGetClockInfo(self, h: dict[str, Any], kind: int) -> int:
        return int(h["clocks"][kind])

    def nvmlDeviceGetMaxClockInfo(self, h: dict[str, Any], kind: int) -> int:
        return int(self._maybe(h["max"].get(kind)))

    def nvmlDeviceGetCurrentClocksEventReasons(self, h: dict[str, Any]) -> int:
        return int(h["throttle"])

    def nvmlDeviceGetTotalEnergyConsumption(self, h: dict[str, Any]) -> int:
        return int(self._maybe(h["energy"]))

    def nvmlDeviceGetComputeRunningProcesses(self, h: dict[str, Any]) -> list[Any]:
        return [SimpleNamespace(pid=pid, usedGpuMemory=mem) for pid, mem in h["procs"]]


def test_every_figure_of_every_gpu() -> None:
    nvml = Nvml.open(FakeNvml())
    assert nvml is not None
    a, _ = nvml.gpus()
    assert (a.index, a.name, a.uuid) == (0, "NVIDIA H100", "GPU-aaa")
    assert (a.utilization_percent, a.memory_utilization_percent) == (87.0, 40.0)
    assert (a.memory_total_bytes, a.memory_used_bytes) == (80 << 30, 60 << 30)
    assert (a.power_watts, a.power_limit_watts, a.temperature_c) == (312.5, 700.0, 61.0)
    assert a.clocks_mhz == {"graphics": 1755, "sm": 1755, "memory": 2619}
    assert a.max_clocks_mhz["sm"] == 1980
    assert a.throttle_reasons == ["sw_power_cap", "sw_thermal_slowdown"]
    assert a.energy_joules == pytest.approx(123_456.789)
    assert [(p.pid, p.memory_bytes) for p in a.processes] == [(4242, 7 << 30), (4343, 1 << 30)]
    assert nvml.driver_version() == "550.54.15"
    d = a.to_dict()
    assert d["processes"][0] == {"pid": 4242, "memory_bytes": 7 << 30}


def test_unsupported_sensors_are_none_not_errors() -> None:
    nvml = Nvml.open(FakeNvml())
    assert nvml is not None
    b = nvml.gpus()[1]
    assert b.name == "GeForce RTX 3060"
    assert b.power_watts is None and b.power_limit_watts is None and b.energy_joules is None
    assert b.max_clocks_mhz == {}
    assert b.temperature_c == 40.0 and b.throttle_reasons == ["gpu_idle"]


def test_totals_across_devices() -> None:
    nvml = Nvml.open(FakeNvml())
    assert nvml is not None
    assert nvml.device_count() == 2
    assert nvml.total_memory() == (80 << 30) + (12 << 30)
    assert nvml.free_memory() == (20 << 30) + (11 << 30)
    assert nvml.process_memory() == {4242: (7 << 30) + (512 << 20), 4343: 1 << 30}
    assert nvml.energy_joules() == pytest.approx(
        123_456.789
    )  # the device without a counter adds nothing


class OldNames:
    """A pynvml from before the clocks-event rename: only the *ThrottleReasons name exists."""

    def __init__(self, lib: FakeNvml) -> None:
        self._lib = lib

    def __getattr__(self, name: str) -> Any:
        if name == "nvmlDeviceGetCurrentClocksEventReasons":
            raise AttributeError(name)
        if name == "nvmlDeviceGetCurrentClocksThrottleReasons":
            return self._lib.nvmlDeviceGetCurrentClocksEventReasons
        return getattr(self._lib, name)


def test_older_library_with_the_throttle_name() -> None:
    nvml = Nvml.open(OldNames(FakeNvml()))
    assert nvml is not None
    assert nvml.gpus()[0].throttle_reasons == ["sw_power_cap", "sw_thermal_slowdown"]


def test_throttle_bits_unknown_ones_shown_in_hex() -> None:
    assert throttle_reason_names(0) == []
    assert throttle_reason_names(0x8 | 0x40) == ["hw_slowdown", "hw_thermal_slowdown"]
    assert throttle_reason_names(0x1 | 0x10000) == ["gpu_idle", "0x10000"]


class NoDriver:
    def nvmlInit(self) -> None:
        raise RuntimeError("NVML Shared Library Not Found")


class NoDevice(FakeNvml):
    def nvmlDeviceGetCount(self) -> int:
        return 0


def test_no_driver_or_no_device_is_none_with_a_reason() -> None:
    assert Nvml.open(NoDriver()) is None
    assert "no NVIDIA driver" in Nvml.why_unavailable(NoDriver())
    assert "Shared Library Not Found" in Nvml.why_unavailable(NoDriver())
    assert Nvml.open(NoDevice()) is None
    assert Nvml.why_unavailable(NoDevice()) == "NVML found no GPU"


def test_this_machine_without_a_driver() -> None:
    """The real pynvml on a machine with no NVIDIA driver: None, and a plain reason."""
    nvml = Nvml.open()
    if nvml is not None:
        pytest.skip("this machine has an NVIDIA driver (covered by tests/gpu)")
    reason = Nvml.why_unavailable()
    assert "no NVIDIA driver" in reason or "not installed" in reason or "no GPU" in reason
