"""On a GPU: a jailed model worker still finds CUDA (device nodes, driver files) and offloads layers."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from appliance.host.worker_jail import WorkerJail, gpu_mounts
from appliance.models.worker import protocol as p
from appliance.models.worker.process import ProcessSpawner
from appliance.sandbox.bwrap import locate_bwrap
from appliance.telemetry.nvml import Nvml
from tests.conftest import require


def test_a_jailed_worker_offloads_to_the_gpu(smollm2_path: Path, tmp_path: Path) -> None:
    nvml = Nvml.open()
    assert nvml is not None
    assert "--dev-bind" in gpu_mounts(), "the host has /dev/nvidia*; the jail must bind them"
    state = tmp_path / "state"
    (state / "kv").mkdir(parents=True)
    jail = WorkerJail(
        locate_bwrap(), state_dir=state, kv_dir=state / "kv", model_dirs=[smollm2_path.parent]
    )
    problem = jail.probe()
    require(problem is None, f"bwrap cannot jail workers on this host: {problem}")

    async def run() -> tuple[int, int, str, str]:
        w = await ProcessSpawner(jail=jail).spawn()
        try:
            assert w.hello.gpu_offload, "CUDA sees no device inside the jail"
            await w.load(
                p.Load(model_path=str(smollm2_path), n_ctx=512, n_gpu_layers=-1), timeout=120
            )
            r = await w.call(
                lambda i: p.Generate(
                    id=i, op="completion", params=p.GenerateParams(prompt="Hi", max_tokens=4)
                ),
                p.GenerateResult,
            )
            used = nvml.process_memory().get(w.pid, 0)
            return (
                used,
                len(r.text),
                os.readlink(f"/proc/{w.pid}/ns/net"),
                os.readlink("/proc/self/ns/net"),
            )
        finally:
            await w.close()

    used, n_text, worker_net, own_net = asyncio.run(run())
    assert worker_net != own_net, "the worker is jailed (its own network namespace)"
    assert used > 50 * 2**20, (
        "the jailed worker holds the weights in GPU memory, under its host pid"
    )
    assert n_text >= 0
