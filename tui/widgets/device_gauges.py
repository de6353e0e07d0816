"""Gauges of one device: a GPU's utilisation, memory and power, or the host's CPU and RAM when the
box has no GPU. Each gauge keeps its own history for the sparkline. The gauges are made with the
widget, not in compose, so a sample that arrives before it is composed reaches them."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Horizontal

from appliance.client.records import GpuDevice, HostSample
from tui import format as fmt
from tui.widgets.gauge import ResourceGauge


def _share(used: float | None, total: float | None) -> float | None:
    return used / total * 100 if used is not None and total else None


class DeviceGauges(Horizontal):
    def __init__(self, titles: tuple[str, str, str], *, id: str | None = None) -> None:
        super().__init__(id=id, classes="device-gauges")
        self.titles = titles
        self.util, self.mem, self.power = (
            ResourceGauge(title, id=gauge_id)
            for gauge_id, title in zip(("util", "mem", "power"), titles, strict=True)
        )

    @classmethod
    def for_gpu(cls, index: int) -> DeviceGauges:
        return cls((f"GPU{index} util", f"GPU{index} mem", f"GPU{index} power"), id=f"gpu-{index}")

    @classmethod
    def for_host(cls) -> DeviceGauges:
        return cls(("CPU", "RAM", "models"), id="host")

    def compose(self) -> ComposeResult:
        yield from (self.util, self.mem, self.power)

    def show_gpu(self, gpu: GpuDevice) -> None:
        self.util.record(gpu.utilization_percent, fmt.percent(gpu.utilization_percent))
        self.mem.record(
            _share(gpu.memory_used_bytes, gpu.memory_total_bytes),
            f"{fmt.size_short(gpu.memory_used_bytes)}/{fmt.size_short(gpu.memory_total_bytes)}",
        )
        power = "-" if gpu.power_watts is None else f"{gpu.power_watts:.0f} W"
        if gpu.power_limit_watts:
            power += f"/{gpu.power_limit_watts:.0f}"
        self.power.record(_share(gpu.power_watts, gpu.power_limit_watts), power)

    def show_host(self, host: HostSample, model_memory: tuple[int, int] | None = None) -> None:
        """CPU and RAM of the host; the third gauge shows the models' share of their memory budget."""
        self.util.record(host.cpu_percent, fmt.percent(host.cpu_percent))
        self.mem.record(
            _share(host.memory_used_bytes, host.memory_total_bytes),
            f"{fmt.size_short(host.memory_used_bytes)}/{fmt.size_short(host.memory_total_bytes)}",
        )
        used, budget = model_memory or (0, 0)
        self.power.record(_share(used, budget), f"{fmt.size_short(used)}/{fmt.size_short(budget)}")
