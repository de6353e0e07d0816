"""Sandbox admission: the memory budget, the share kept for agents, and what a sandbox counts."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.errors import InsufficientMemory
from appliance.sandbox.admission import SandboxAdmission, footprint_mb, host_memory_mb
from appliance.sandbox.errors import SandboxLimitReached, SandboxMemoryFull
from appliance.sandbox.limits import SandboxLimits


def test_a_sandbox_counts_its_memory_and_the_tmpfs_it_may_fill() -> None:
    python = SandboxLimits(memory_mb=256, tmp_mb=64, workspace_mb=256)
    assert footprint_mb(python, workspace_in_ram=True) == 256 + 2 * 64 + 256
    assert footprint_mb(python, workspace_in_ram=False) == 256 + 2 * 64  # a polled directory
    compile_step = SandboxLimits(memory_mb=1536, tmp_mb=64, workspace_mb=256)
    assert (
        footprint_mb(python, workspace_in_ram=True, compile_limits=compile_step) == 1536 + 128 + 256
    )


def test_the_issue_case_is_refused_long_before_thirty_sandboxes() -> None:
    """30 sandboxes x 4096 MB were admitted on a 24 GB box."""
    admission = SandboxAdmission(12 * 1024, agent_share=0.25, max_stateful=32)
    big = footprint_mb(SandboxLimits(memory_mb=4096), workspace_in_ram=True)
    admitted = 0
    with pytest.raises(SandboxMemoryFull) as refused:
        for _ in range(30):
            admission.admit(big, "client", stateful=True)
            admitted += 1
    assert admitted == 2 and admission.reserved_mb <= admission.client_budget_mb
    assert refused.value.status == 503 and refused.value.headers["Retry-After"] == "30"
    assert (
        "sandbox.memory_budget_mb" in refused.value.message
        and "kept for agents" in refused.value.message
    )


def test_clients_cannot_take_the_agents_share_but_agents_can_use_it_all() -> None:
    admission = SandboxAdmission(1000, agent_share=0.25, max_stateful=32)
    assert admission.client_budget_mb == 750
    admission.admit(700, "client", stateful=False)
    with pytest.raises(SandboxMemoryFull):
        admission.admit(100, "client", stateful=False)
    agent = admission.admit(250, "agent", stateful=True)
    with pytest.raises(SandboxMemoryFull):  # the whole budget is the agents' limit
        admission.admit(100, "agent", stateful=True)
    admission.release(agent)
    assert admission.reserved_mb == 700
    assert admission.stats()["agents_mb"] == 0 and admission.stats()["clients_mb"] == 700


def test_a_sandbox_that_could_never_fit_is_507_not_retry() -> None:
    admission = SandboxAdmission(1000, agent_share=0.25, max_stateful=32)
    with pytest.raises(InsufficientMemory) as err:
        admission.admit(800, "client", stateful=False)
    assert err.value.status == 507 and "750 MB" in err.value.message
    assert admission.admit(800, "agent", stateful=True).mb == 800


def test_the_sandbox_count_keeps_places_for_agents() -> None:
    admission = SandboxAdmission(10**6, agent_share=0.25, max_stateful=8)
    assert admission.client_max_stateful == 6
    held = [admission.admit(1, "client", stateful=True) for _ in range(6)]
    with pytest.raises(SandboxLimitReached) as err:
        admission.admit(1, "client", stateful=True)
    assert "kept for agents" in err.value.message and err.value.headers["Retry-After"]
    admission.admit(1, "client", stateful=False)  # one-shot runs are not in the count
    agents = [admission.admit(1, "agent", stateful=True) for _ in range(2)]
    with pytest.raises(SandboxLimitReached, match=r"sandbox\.max_sandboxes"):
        admission.admit(1, "agent", stateful=True)
    admission.release(held[0])
    admission.release(agents[0])
    admission.admit(1, "client", stateful=True)
    # a small cap rounds the agents' places down, so clients are never left with none
    assert SandboxAdmission(10**6, agent_share=0.25, max_stateful=2).client_max_stateful == 2


def test_the_measured_budget_reads_ram_and_a_lower_cgroup_limit(tmp_path: Path) -> None:
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       24683636 kB\nMemFree:  1 kB\n")
    cgroup = tmp_path / "cgroup"
    (cgroup / "app.slice").mkdir(parents=True)
    own = tmp_path / "self-cgroup"
    own.write_text("0::/app.slice\n")
    assert host_memory_mb(meminfo, cgroup, own) == 24683636 // 1024
    (cgroup / "app.slice" / "memory.max").write_text("max\n")
    assert host_memory_mb(meminfo, cgroup, own) == 24683636 // 1024
    (cgroup / "app.slice" / "memory.max").write_text(str(8 * 1024**3))
    assert host_memory_mb(meminfo, cgroup, own) == 8192
