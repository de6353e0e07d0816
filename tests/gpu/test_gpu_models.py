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


def test_parallel_8_adds_only_the_kv_cache_to_gpu_memory(
    smollm2_path: Path, tmp_path: Path
) -> None:
    """One copy of the weights whatever `parallel` is: 8 sequences cost 7 more KV caches."""
    from appliance.models.gguf_info import read_gguf_info

    nvml = Nvml.open()
    assert nvml is not None
    used: dict[int, int] = {}
    for parallel in (1, 8):
        prof = {"source": str(smollm2_path), "gpu_layers": -1, "context_size": 2048}
        prof["parallel"] = parallel
        with running_daemon(tmp_path / f"p{parallel}", models={"m": prof}) as d, d.http() as c:
            r = c.post("/v1/completions", json={"model": "m", "max_tokens": 4, "prompt": "Hi"})
            assert r.status_code == 200
            used[parallel] = nvml.process_memory().get(d.model("m")["worker_pid"], 0)
    kv = read_gguf_info(smollm2_path).kv_bytes(2048) * 7
    added = used[8] - used[1]
    print(f"GPU memory: parallel 1 {used[1] / 2**20:.0f} MiB, parallel 8 {used[8] / 2**20:.0f} MiB")
    assert added <= 1.25 * kv + 64 * 2**20, (added, kv)
