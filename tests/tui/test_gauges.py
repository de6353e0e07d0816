"""Gauges take samples that arrive before they are composed (a status poll landing while the
overview mounts them crashed it with NoMatches: '.gauge-title')."""

from __future__ import annotations

from textual.app import App, ComposeResult
from textual.containers import Horizontal
from textual.widgets import Label, ProgressBar

from appliance.client.records import GpuDevice
from tui.widgets.device_gauges import DeviceGauges
from tui.widgets.gauge import ResourceGauge

GIB = 2**30


class Host(App[None]):
    def compose(self) -> ComposeResult:
        yield Horizontal(id="gauges")


def title(gauge: ResourceGauge) -> str:
    return str(gauge.query_one(".gauge-title", Label).content)


def gpu(util: float) -> GpuDevice:
    return GpuDevice(
        index=0,
        name="test",
        utilization_percent=util,
        memory_used_bytes=2 * GIB,
        memory_total_bytes=8 * GIB,
        power_watts=None,
        power_limit_watts=None,
    )


async def test_gpu_gauges_show_samples_recorded_before_and_while_they_mount() -> None:
    app = Host()
    async with app.run_test() as pilot:
        gauges = DeviceGauges.for_gpu(0)
        gauges.show_gpu(gpu(10.0))  # not mounted at all
        app.query_one("#gauges").mount(gauges)  # not awaited: mounted, not composed yet
        gauges.show_gpu(gpu(42.0))
        await pilot.pause()
        assert title(gauges.util) == "GPU0 util  42%"
        assert gauges.util.query_one(ProgressBar).progress == 42
        assert list(gauges.util.history) == [10.0, 42.0]
        assert title(gauges.mem) == "GPU0 mem  2.0G/8.0G"
        assert title(gauges.power) == "GPU0 power  -"
        gauges.show_gpu(gpu(80.0))  # and once composed, as before
        assert title(gauges.util) == "GPU0 util  80%" and list(gauges.util.history)[-1] == 80.0


async def test_an_unknown_share_empties_the_bar_and_keeps_the_history() -> None:
    app = Host()
    async with app.run_test() as pilot:
        gauge = ResourceGauge("CPU")
        await app.query_one("#gauges").mount(gauge)
        gauge.record(150.0, "150%")
        gauge.record(None, "-")
        await pilot.pause()
        assert gauge.query_one(ProgressBar).progress == 0 and list(gauge.history) == [100.0]
        assert title(gauge) == "CPU  -"
