"""The jail's command line, read as data: what a worker may see, write and reach."""

from __future__ import annotations

from pathlib import Path

from appliance.host.worker_jail import WorkerJail, gpu_mounts


def binds(argv: list[str], kind: str) -> list[str]:
    return [argv[i + 2] for i, a in enumerate(argv) if a == kind]


def test_the_worker_jail_binds_models_read_only_and_only_kv_writable(tmp_path: Path) -> None:
    state = tmp_path / "state"
    for sub in ("models", "kv", "sandboxes"):
        (state / sub).mkdir(parents=True)
    elsewhere = tmp_path / "profiles-point-here"
    elsewhere.mkdir()
    target = elsewhere / "real.gguf"
    target.write_bytes(b"GGUF")
    link = tmp_path / "link.gguf"
    link.symlink_to(target)
    jail = WorkerJail(
        Path("/usr/bin/bwrap"),
        state_dir=state,
        kv_dir=state / "kv",
        model_dirs=[state / "models"],
        model_files=lambda: [link],
        gpu=lambda: ["--dev-bind", "/dev/nvidia0", "/dev/nvidia0"],
    )
    cmd = jail.command(["python", "-m", "appliance.models.worker"], models=True)
    try:
        argv = cmd.argv
        for flag in (
            "--unshare-all",
            "--unshare-user",
            "--die-with-parent",
            "--new-session",
            "--info-fd",
        ):
            assert flag in argv
        assert "--share-net" not in argv and "--as-pid-1" not in argv
        assert argv[-4:] == ["--", "python", "-m", "appliance.models.worker"]
        ro = binds(argv, "--ro-bind")
        assert str(state / "models") in ro and str(link) in ro and str(target) in ro
        assert binds(argv, "--bind") == [str(state / "kv")], "nothing else is writable"
        assert argv.index("--bind") > max(i for i, a in enumerate(argv) if a == "--ro-bind")
        assert not any(
            p in (str(state), str(state / "sandboxes")) for p in ro + binds(argv, "--bind")
        )
        assert "--dev-bind" in argv
        assert cmd.sees(str(state / "models" / "new.gguf")) and cmd.sees(str(link))
        assert not cmd.sees(str(state / "appliance.db")) and not cmd.sees(
            str(state / "sandboxes" / "x.gguf")
        )
        prover = jail.command(["python"], models=False)
        assert str(state / "models") not in prover.argv and str(state / "kv") not in prover.argv
        assert "--dev-bind" not in prover.argv, "the grammar prover gets no GPU"
        prover.close_child_fds()
        prover.discard()
    finally:
        cmd.close_child_fds()
        cmd.discard()


def test_gpu_device_nodes_are_bound_when_present(tmp_path: Path) -> None:
    assert gpu_mounts(str(tmp_path)) == []
    for name in ("nvidia0", "nvidiactl", "nvidia-uvm"):
        (tmp_path / name).touch()
    (tmp_path / "nvidia-caps").mkdir()
    args = gpu_mounts(str(tmp_path))
    assert [args[i + 2] for i, a in enumerate(args) if a == "--dev-bind"] == [
        "/dev/nvidia-caps",
        "/dev/nvidia-uvm",
        "/dev/nvidia0",
        "/dev/nvidiactl",
    ]
    assert "/proc/driver/nvidia" in args and "/sys" in args
