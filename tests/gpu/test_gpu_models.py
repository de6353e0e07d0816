"""On a GPU: models are offloaded, the budget is GPU memory, and unloading gives the memory back."""

from __future__ import annotations

import time
from pathlib import Path

from appliance.telemetry.nvml import Nvml
from tests.integration.daemon import running_daemon


def test_model_runs_on_the_gpu_and_memory_comes_back(smollm2_path: Path, tmp_path: Path) -> None:
    nvml = Nvml.open()
    assert nvml is not None
    with (
        running_daemon(
            tmp_path, models={"m": {"source": str(smollm2_path), "gpu_layers": -1}}
        ) as d,
        d.http() as c,
    ):
        assert c.get("/api/status").json()["scheduler"]["memory_kind"] == "gpu"
        r = c.post(
            "/v1/chat/completions",
            json={"model": "m", "max_tokens": 8, "messages": [{"role": "user", "content": "Hi"}]},
        )
        assert r.status_code == 200
        m = d.model("m")
        pid = m["worker_pid"]
        used = nvml.process_memory().get(pid, 0)
        assert used > 50 * 2**20, "the worker should hold the weights in GPU memory"
        assert m["memory_bytes"] > 50 * 2**20, "the scheduler measures the worker through NVML"
        c.post("/api/models/m/unload")
        d.wait_state("m", {"unloaded"})
        deadline = time.monotonic() + 10
        while pid in nvml.process_memory() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert pid not in nvml.process_memory()
