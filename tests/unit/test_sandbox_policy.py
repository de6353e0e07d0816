"""SandboxPolicy -> bwrap arguments, the sandbox's mounts and environment, and the uid mapping."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from appliance.sandbox.identity import SandboxIdentity
from appliance.sandbox.policy import (
    Mount,
    SandboxPolicy,
    base_mounts,
    bwrap_args,
    sandbox_env,
    system_mounts,
    write_sandbox_etc,
)


def _pairs(args: list[str], flag: str) -> list[tuple[str, str]]:
    return [(args[i + 1], args[i + 2]) for i, a in enumerate(args) if a == flag]


def _policy(**kw: object) -> SandboxPolicy:
    defaults: dict[str, object] = {
        "command": ("/usr/bin/python3", "main.py"),
        "mounts": (
            Mount("proc", "/proc"),
            Mount("dev", "/dev"),
            Mount("ro-bind", "/usr", "/usr"),
            Mount("symlink", "/lib", "usr/lib"),
            Mount("ro-bind", "/root/.pyenv/versions/3.11.7", "/root/.pyenv/versions/3.11.7"),
            Mount("tmpfs", "/tmp", size_bytes=64 << 20, mode=0o1777),
            Mount("bind", "/workspace", "/state/sandboxes/run-1"),
        ),
        "env": (("PATH", "/usr/bin"), ("HOME", "/workspace")),
    }
    defaults.update(kw)
    return SandboxPolicy(**defaults)  # type: ignore[arg-type]


def test_every_namespace_is_new_and_the_program_is_pid_1() -> None:
    args = bwrap_args(_policy())
    for flag in (
        "--unshare-all",
        "--unshare-user",
        "--die-with-parent",
        "--new-session",
        "--as-pid-1",
    ):
        assert flag in args
    assert "--share-net" not in args
    assert args[args.index("--") + 1 :] == ["/usr/bin/python3", "main.py"]


def test_network_is_shared_only_when_the_policy_says_so() -> None:
    assert "--share-net" in bwrap_args(_policy(network=True))


def test_environment_is_cleared_and_only_the_policy_env_is_set(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("APPLIANCE_TOKEN", "secret-token-value")
    args = bwrap_args(_policy())
    assert "--clearenv" in args
    assert args.index("--clearenv") < args.index("--setenv")
    assert _pairs(args, "--setenv") == [("PATH", "/usr/bin"), ("HOME", "/workspace")]
    assert not any("secret-token-value" in a for a in args)


def test_binds_tmpfs_and_workspace_become_the_right_flags() -> None:
    args = bwrap_args(_policy())
    assert ("/usr", "/usr") in _pairs(args, "--ro-bind")
    assert _pairs(args, "--bind") == [("/state/sandboxes/run-1", "/workspace")]
    assert ("usr/lib", "/lib") in _pairs(args, "--symlink")
    i = args.index("--tmpfs")
    assert args[i + 1] == "/tmp"
    assert args[i - 4 : i] == ["--perms", "1777", "--size", str(64 << 20)]
    assert args.index("--proc") < args.index("--ro-bind")


def test_parents_of_a_deep_mount_are_created_world_searchable() -> None:
    """A toolchain under /root (0700 on the host) must stay reachable for the sandbox user."""
    args = bwrap_args(_policy())
    dirs = [args[i + 1] for i, a in enumerate(args) if a == "--dir"]
    assert dirs == ["/root", "/root/.pyenv", "/root/.pyenv/versions"]
    for d in dirs:
        j = args.index(d)
        assert args[j - 3 : j] == ["--perms", "0755", "--dir"]
    # parents come before the bind that needs them, and nothing is made inside a bound tree
    assert args.index("/root/.pyenv/versions") < args.index("/root/.pyenv/versions/3.11.7")
    nested = _policy(
        mounts=(
            Mount("ro-bind", "/usr", "/usr"),
            Mount("ro-bind-try", "/usr/lib/jvm/x", "/usr/lib/jvm/x"),
        )
    )
    assert "--dir" not in bwrap_args(nested)


def test_info_and_block_fds_and_root_capabilities() -> None:
    args = bwrap_args(
        _policy(uid=0, gid=0, drop_all_caps=True, keep_caps=("CAP_SETUID", "CAP_SETGID")),
        info_fd=7,
        userns_block_fd=9,
    )
    assert args[args.index("--info-fd") + 1] == "7"
    assert args[args.index("--userns-block-fd") + 1] == "9"
    assert args.index("--cap-drop") < args.index("--cap-add")
    assert [args[i + 1] for i, a in enumerate(args) if a == "--cap-add"] == [
        "CAP_SETUID",
        "CAP_SETGID",
    ]
    assert (args[args.index("--uid") + 1], args[args.index("--gid") + 1]) == ("0", "0")


def test_the_root_is_made_read_only_after_every_mount() -> None:
    args = bwrap_args(_policy())
    at = args.index("--remount-ro")
    assert args[at + 1] == "/" and at > max(i for i, a in enumerate(args) if a == "--bind")
    assert at < args.index("--")


def test_the_seccomp_filter_comes_through_an_fd_before_the_command() -> None:
    assert "--seccomp" not in bwrap_args(_policy())
    args = bwrap_args(_policy(seccomp=True), seccomp_fd=11)
    assert args[args.index("--seccomp") + 1] == "11"
    assert args.index("--seccomp") < args.index("--")
    with pytest.raises(ValueError):
        bwrap_args(_policy(seccomp=True))


def test_system_mounts_follow_the_hosts_usr_layout(tmp_path: Path) -> None:
    (tmp_path / "usr" / "lib").mkdir(parents=True)
    (tmp_path / "lib").symlink_to("usr/lib")
    (tmp_path / "lib64").mkdir()  # not merged on this fake host
    mounts = system_mounts(tmp_path)
    assert Mount("symlink", "/lib", "usr/lib") in mounts
    assert Mount("ro-bind", "/lib64", str(tmp_path / "lib64")) in mounts
    assert not any(m.dest == "/sbin" for m in mounts)  # absent on the host, absent inside


def test_base_mounts_show_etc_files_for_the_network_only_when_granted(tmp_path: Path) -> None:
    common = dict(
        system=(),
        etc_dir=tmp_path,
        workspace=tmp_path / "ws",
        toolchain_roots=["/opt/x"],
        extra_ro=[],
        drivers=[],
        tmp_bytes=1 << 20,
    )
    closed = base_mounts(network=False, **common)  # type: ignore[arg-type]
    opened = base_mounts(network=True, **common)  # type: ignore[arg-type]
    assert not any(m.dest == "/etc/resolv.conf" for m in closed)
    assert any(m.dest == "/etc/resolv.conf" for m in opened)
    assert Mount("ro-bind", "/etc/passwd", str(tmp_path / "passwd")) in closed
    assert closed[-1] == Mount("bind", "/workspace", str(tmp_path / "ws"))
    assert Mount("ro-bind", "/opt/x", "/opt/x") in closed


def test_sandbox_env_has_no_daemon_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "nope")
    env = dict(sandbox_env(["/opt/py/bin"], (("PYTHONDONTWRITEBYTECODE", "1"),)))
    assert env["PATH"].split(":")[0] == "/opt/py/bin"
    assert env["HOME"] == "/workspace"
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"
    assert "AWS_SECRET_ACCESS_KEY" not in env
    assert set(env) <= {
        "PATH",
        "HOME",
        "USER",
        "LOGNAME",
        "TMPDIR",
        "LANG",
        "LC_ALL",
        "TERM",
        "PYTHONDONTWRITEBYTECODE",
    }


def test_sandbox_etc_has_a_sandbox_user_and_no_host_users(tmp_path: Path) -> None:
    etc = write_sandbox_etc(tmp_path / "etc")
    passwd = (etc / "passwd").read_text()
    assert "sandbox:x:1000:1000" in passwd
    host_users = {
        line.split(":")[0] for line in Path("/etc/passwd").read_text().splitlines() if line
    }
    assert {line.split(":")[0] for line in passwd.splitlines()} <= {"root", "sandbox", "nobody"} | (
        host_users & {"root", "nobody"}
    )


def test_identity_maps_for_an_unprivileged_daemon() -> None:
    ident = SandboxIdentity(host_uid=1234, host_gid=1234, daemon_is_root=False)
    assert ident.uid_map() == "1000 1234 1\n"
    assert ident.gid_map() == "1000 1234 1\n"
    assert ident.command_prefix() == ()
    assert (ident.bwrap_uid, ident.bwrap_gid, ident.keep_caps) == (1000, 1000, ())


def test_identity_for_a_root_daemon_drops_to_an_unprivileged_uid() -> None:
    ident = SandboxIdentity(
        host_uid=65534, host_gid=65534, daemon_is_root=True, setpriv="/usr/bin/setpriv"
    )
    assert ident.uid_map() == "0 0 1\n1000 65534 1\n"
    prefix = ident.command_prefix()
    assert prefix[0] == "/usr/bin/setpriv"
    assert "--reuid=1000" in prefix and "--regid=1000" in prefix and "--clear-groups" in prefix
    assert "--pdeathsig=keep" in prefix and prefix[-1] == "--"
    assert ident.keep_caps == ("CAP_SETUID", "CAP_SETGID")


def test_identity_writes_maps_into_proc(tmp_path: Path) -> None:
    (tmp_path / "42").mkdir()
    SandboxIdentity(host_uid=os.getuid() or 1234, host_gid=5, daemon_is_root=False).write_maps(
        42, tmp_path
    )
    assert (tmp_path / "42" / "setgroups").read_text() == "deny"
    assert (tmp_path / "42" / "gid_map").read_text() == "1000 5 1\n"
