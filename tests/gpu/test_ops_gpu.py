"""On a GPU: /api/gpu, the GPU gauges and the energy in usage come from the real NVML."""

from __future__ import annotations

import time
from pathlib import Path

from appliance.telemetry.nvml import Nvml
from tests.integration.daemon import running_daemon
from tests.integration.ops_client import sample, scrape


def test_real_nvml_figures() -> None:
    nvml = Nvml.open()
    assert nvml is not None
    gpus = nvml.gpus()
    assert gpus and all(g.name and g.memory_total_bytes for g in gpus)
    assert all(g.memory_used_bytes is not None and g.temperature_c is not None for g in gpus)
    assert nvml.driver_version()


def test_gpu_report_metrics_and_energy_usage(tiny_model_path: Path, tmp_path: Path) -> None:
    with (
        running_daemon(
            tmp_path,
            models={"m": {"source": str(tiny_model_path), "gpu_layers": -1}},
            config={"telemetry": {"usage_interval_s": 1}},
        ) as d,
        d.http() as c,
    ):
        r = c.post("/v1/completions", json={"model": "m", "prompt": "Once", "max_tokens": 64})
        assert r.status_code == 200
        g = c.get("/api/gpu").json()
        assert g["nvml"] is True and g["gpus"] and g["driver_version"]
        worker = next(w for w in g["workers"] if w["model"] == "m")
        assert worker["gpu_memory_bytes"] and worker["gpu_memory_bytes"] > 0
        s = scrape(c)
        assert sample(s, "appliance_gpus") == len(g["gpus"])
        assert sample(s, "appliance_gpu_memory_total_bytes", gpu="0") > 0
        time.sleep(2.5)  # let a usage interval pass with the model resident
        usage = c.get("/api/usage", params={"by": "model"}).json()
        assert usage["energy_measured"] is True
        row = next(r for r in usage["rows"] if r["key"] == "m")
        if g["gpus"][0]["energy_joules"] is not None:
            assert row["energy_j"] > 0, "NVML's energy counter moved while the model was resident"
        assert row["gpu_seconds"] > 1.0
