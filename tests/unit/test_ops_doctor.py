"""`appliance doctor`: every check with a passing and a failing host, through injected probes."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import msgspec
import pytest

from appliance.config import Config, ConfigError, ServerConfig
from appliance.errors import ApplianceError
from appliance.host.doctor import CheckResult, run_doctor
from appliance.host.probes import (
    CgroupInfo,
    DoctorProbes,
    GpuInfo,
    LeftoverInfo,
    LlamaBuild,
)
from appliance.sandbox.preflight import Check, PreflightReport

GiB = 2**30
GPU = GpuInfo(driver="550.54", names=["NVIDIA L4"])
NO_GPU = GpuInfo(
    driver=None, names=[], why_none="no NVIDIA driver found (NVML could not be initialised)"
)


def healthy(tmp_path: Path) -> DoctorProbes:
    """A well set-up GPU box."""
    cfg = Config(state_dir=str(tmp_path / "state"))
    return DoctorProbes(
        python_version=lambda: (3, 12, 3),
        llama=lambda: LlamaBuild(version="0.3.36", cuda=True, gpu_offload=True),
        gpus=lambda: GPU,
        env={},
        sandboxes=lambda bwrap: PreflightReport(
            [Check("bwrap", True, "/usr/bin/bwrap"), Check("user namespaces", True, "works")]
        ),
        cgroup=lambda: CgroupInfo(
            version=2,
            path="/sys/fs/cgroup/system.slice/appliance.service",
            controllers=frozenset({"cpu", "memory", "pids"}),
            writable=True,
        ),
        writable=lambda path: None,
        free_bytes=lambda path: 200 * GiB,
        port=lambda host, port: "free",
        leftovers=lambda state: LeftoverInfo(daemon_pid=None),
        valid_tokens=lambda state: 0,
        load_config=lambda path, state: cfg,
        default_models=lambda c: {"smollm2-135m-instruct": True, "all-minilm-l6-v2": True},
        worker_jail=lambda c: None,
        workspace_quota=lambda c: None,
    )


def check(results: list[CheckResult], name: str) -> CheckResult:
    return next(r for r in results if r.name == name)


def run(tmp_path: Path, **changes: Any) -> list[CheckResult]:
    return run_doctor(None, None, dataclasses.replace(healthy(tmp_path), **changes))


def test_a_healthy_gpu_box_passes_everything(tmp_path: Path) -> None:
    results = run(tmp_path)
    assert [r.status for r in results] == ["ok"] * len(results), results
    assert {r.name for r in results} == {
        "python",
        "llama-cpp-python",
        "nvidia driver",
        "gpu for llama.cpp",
        "sandboxes",
        "workspace quotas",
        "model worker jail",
        "cgroup delegation",
        "state directory",
        "image store",
        "leftover processes",
        "port",
        "api tokens",
        "config",
        "default models",
    }
    assert "CUDA build" in check(results, "llama-cpp-python").detail
    assert "NVIDIA L4" in check(results, "nvidia driver").detail


def test_python(tmp_path: Path) -> None:
    bad = check(run(tmp_path, python_version=lambda: (3, 10, 12)), "python")
    assert bad.status == "failure" and "3.11" in bad.detail and "install" in bad.fix


def test_llama_build(tmp_path: Path) -> None:
    missing = check(run(tmp_path, llama=lambda: "ImportError: libllama.so"), "llama-cpp-python")
    assert (
        missing.status == "failure"
        and "libllama.so" in missing.detail
        and "install.sh" in missing.fix
    )
    cpu = check(
        run(tmp_path, llama=lambda: LlamaBuild("0.3.36", cuda=False, gpu_offload=False)),
        "llama-cpp-python",
    )
    assert cpu.status == "warning" and "CPU build" in cpu.detail and "APPLIANCE_CUDA=1" in cpu.fix
    cpu_box = run(
        tmp_path,
        llama=lambda: LlamaBuild("0.3.36", cuda=False, gpu_offload=False),
        gpus=lambda: NO_GPU,
    )
    assert check(cpu_box, "llama-cpp-python").status == "ok", "a CPU build is right for a CPU box"


def test_driver(tmp_path: Path) -> None:
    none = check(run(tmp_path, gpus=lambda: NO_GPU), "nvidia driver")
    assert (
        none.status == "warning" and "no NVIDIA driver" in none.detail and "nvidia-smi" in none.fix
    )


def test_gpu_visible_to_llama_cpp(tmp_path: Path) -> None:
    cpu_build = check(
        run(tmp_path, llama=lambda: LlamaBuild("0.3.36", False, False)), "gpu for llama.cpp"
    )
    assert cpu_build.status == "failure" and "without CUDA" in cpu_build.detail
    hidden = check(run(tmp_path, env={"CUDA_VISIBLE_DEVICES": ""}), "gpu for llama.cpp")
    assert hidden.status == "failure" and "CUDA_VISIBLE_DEVICES" in hidden.fix
    unseen = check(
        run(tmp_path, llama=lambda: LlamaBuild("0.3.36", True, False)), "gpu for llama.cpp"
    )
    assert (
        unseen.status == "failure"
        and "sees no GPU" in unseen.detail
        and "/dev/nvidia" in unseen.fix
    )
    assert check(run(tmp_path, gpus=lambda: NO_GPU), "gpu for llama.cpp").status == "ok"


def test_sandboxes_with_the_apparmor_fix(tmp_path: Path) -> None:
    blocked = PreflightReport(
        [
            Check("bwrap", True, "/usr/bin/bwrap"),
            Check(
                "user namespaces",
                False,
                "bwrap cannot create a sandbox: setting up uid map: Permission denied.",
                "this host's AppArmor blocks unprivileged user namespaces ... apparmor_parser -r ...",
            ),
        ]
    )
    bad = check(run(tmp_path, sandboxes=lambda bwrap: blocked), "sandboxes")
    assert bad.status == "failure" and "uid map" in bad.detail and "apparmor_parser" in bad.fix


def test_cgroup_delegation(tmp_path: Path) -> None:
    shell = CgroupInfo(
        version=2,
        path="/sys/fs/cgroup/user.slice/session-1.scope",
        controllers=frozenset({"memory", "pids"}),
        writable=False,
    )
    not_writable = check(run(tmp_path, cgroup=lambda: shell), "cgroup delegation")
    assert not_writable.status == "warning" and "Delegate=yes" in not_writable.fix
    no_pids = dataclasses.replace(shell, controllers=frozenset({"memory"}), writable=True)
    assert "pids" in check(run(tmp_path, cgroup=lambda: no_pids), "cgroup delegation").detail
    v1 = check(run(tmp_path, cgroup=lambda: CgroupInfo(version=1)), "cgroup delegation")
    assert v1.status == "warning" and "unified_cgroup_hierarchy" in v1.fix


def test_state_directory(tmp_path: Path) -> None:
    ro = check(run(tmp_path, writable=lambda p: "Read-only file system"), "state directory")
    assert ro.status == "failure" and "Read-only" in ro.detail and "--state-dir" in ro.fix
    full = check(run(tmp_path, free_bytes=lambda p: GiB // 2), "state directory")
    assert full.status == "failure" and "0.5 GiB free" in full.detail
    tight = check(run(tmp_path, free_bytes=lambda p: 3 * GiB), "state directory")
    assert tight.status == "warning"


def test_leftover_processes(tmp_path: Path) -> None:
    left = LeftoverInfo(None, ["pid 4242 (bwrap of pool-0a1b)", "pid 4250 (model worker: python)"])
    found = check(run(tmp_path, leftovers=lambda state: left), "leftover processes")
    assert found.status == "warning" and "2 process(es)" in found.detail
    assert "bwrap of pool-0a1b" in found.detail and "kill -9 4242 4250" in found.fix
    running = check(
        run(tmp_path, leftovers=lambda state: LeftoverInfo(daemon_pid=77)), "leftover processes"
    )
    assert running.status == "ok" and "pid 77" in running.detail


def test_port(tmp_path: Path) -> None:
    taken = check(run(tmp_path, port=lambda h, p: "taken"), "port")
    assert taken.status == "failure" and "127.0.0.1:8420" in taken.detail and "--port" in taken.fix
    ours = check(run(tmp_path, port=lambda h, p: "appliance"), "port")
    assert ours.status == "ok" and "already serving" in ours.detail


def test_tokens_for_a_network_bind(tmp_path: Path) -> None:
    cfg = Config(state_dir=str(tmp_path), server=ServerConfig(host="0.0.0.0"))
    bad = check(run(tmp_path, load_config=lambda p, s: cfg), "api tokens")
    assert bad.status == "failure" and "appliance token create" in bad.fix
    good = check(
        run(tmp_path, load_config=lambda p, s: cfg, valid_tokens=lambda s: 2), "api tokens"
    )
    assert good.status == "ok" and "2 valid token(s)" in good.detail


def test_config(tmp_path: Path) -> None:
    def broken(path: Path | None, state: str | None) -> Config:
        raise ConfigError(
            "unknown key; remove it or check its spelling",
            file="/etc/appliance/config.toml",
            key="server.prot",
        )

    results = run(tmp_path, load_config=broken)
    bad = check(results, "config")
    assert bad.status == "failure" and "server.prot" in bad.detail
    assert len(results) == len(run(tmp_path)), "the other checks still run, on the defaults"


def test_workspace_quotas_that_are_only_polled_are_a_warning(tmp_path: Path) -> None:
    polled = check(
        run(tmp_path, workspace_quota=lambda c: "nsenter is missing"), "workspace quotas"
    )
    assert polled.status == "warning" and "nsenter is missing" in polled.detail
    assert "polled" in polled.detail and "util-linux" in polled.fix


def test_default_models(tmp_path: Path) -> None:
    missing = check(
        run(tmp_path, default_models=lambda c: {"a": True, "b": False}), "default models"
    )
    assert missing.status == "warning" and "b" in missing.detail and "models fetch" in missing.fix
    unknown = check(
        run(tmp_path, default_models=lambda c: {"nope": "no model 'nope'"}), "default models"
    )
    assert unknown.status == "failure" and "nope" in unknown.detail

    def unreadable(c: Config) -> dict[str, bool | str]:
        raise ApplianceError("profiles/models/x.toml: not valid TOML")

    assert check(run(tmp_path, default_models=unreadable), "default models").status == "failure"


@pytest.mark.parametrize("status", ["ok", "warning", "failure"])
def test_cli_exit_code_follows_failures(
    tmp_path: Path, status: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import argparse

    from appliance.cli import doctor as cli

    monkeypatch.setattr(
        cli, "run_doctor", lambda c, s: [CheckResult("x", status, "detail", "the fix")]
    )  # type: ignore[arg-type]
    code = cli.run(argparse.Namespace(config=None, state_dir=None, json=False))
    out = capsys.readouterr().out
    assert code == (1 if status == "failure" else 0)
    assert "detail" in out and ("fix: the fix" in out)


def test_unjailed_model_workers_are_a_warning_with_the_reason(tmp_path: Path) -> None:
    cfg = Config(state_dir=str(tmp_path / "state"))
    off = msgspec.structs.replace(
        cfg, models=msgspec.structs.replace(cfg.models, jail_workers=False)
    )
    disabled = check(run(tmp_path, load_config=lambda path, state: off), "model worker jail")
    assert disabled.status == "warning" and "jail_workers" in disabled.fix
    blocked = check(
        run(tmp_path, worker_jail=lambda c: "bwrap: setting up uid map: Permission denied"),
        "model worker jail",
    )
    assert blocked.status == "warning"
    assert "setting up uid map" in blocked.detail and "run unjailed" in blocked.detail
    assert "sandboxes" in blocked.fix


def test_image_store_size_and_an_unrunnable_image(tmp_path: Path) -> None:
    from appliance.sandbox.images.store import StoreReport

    fine = check(run(tmp_path), "image store")
    assert fine.status == "ok" and "0 image(s)" in fine.detail
    broken = StoreReport(images=1, bytes=GiB, problems=["localhost/x:1: layer sha256:ab missing"])
    bad = check(run(tmp_path, images=lambda state: broken), "image store")
    assert bad.status == "warning" and "localhost/x:1" in bad.detail
    assert "appliance images rm" in bad.fix
