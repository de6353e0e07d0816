"""sd_notify against a real datagram socket, watchdog timing, and the service installer with a
fake command runner in a temporary root."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from appliance.errors import ApplianceError, ConfigError
from appliance.host.service import (
    ServiceInstaller,
    ServicePaths,
    default_config,
    render_unit,
    shipped_unit_path,
)
from appliance.host.systemd import SystemdNotifier, watchdog_interval, watchdog_loop


@contextlib.contextmanager
def notify_socket(address: str) -> Iterator[socket.socket]:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind("\0" + address[1:] if address.startswith("@") else address)
    s.settimeout(5)
    try:
        yield s
    finally:
        s.close()


def test_notify_sends_key_value_datagrams(tmp_path: Path) -> None:
    path = str(tmp_path / "notify.sock")
    with notify_socket(path) as sock:
        n = SystemdNotifier.from_env({"NOTIFY_SOCKET": path})
        assert n.enabled
        assert n.ready(status="serving on http://127.0.0.1:8420")
        ready = sock.recv(4096).decode().split("\n")
        assert ready[0] == "READY=1" and f"MAINPID={os.getpid()}" in ready
        assert "STATUS=serving on http://127.0.0.1:8420" in ready
        assert n.watchdog() and sock.recv(4096) == b"WATCHDOG=1"
        assert n.stopping() and sock.recv(4096).decode().startswith("STOPPING=1\n")


def test_abstract_socket_address() -> None:
    address = f"@appliance-test-{os.getpid()}"
    with notify_socket(address) as sock:
        assert SystemdNotifier(address).status("loading models")
        assert sock.recv(4096) == b"STATUS=loading models"


def test_without_systemd_or_with_a_dead_socket_nothing_fails(tmp_path: Path) -> None:
    n = SystemdNotifier.from_env({})
    assert not n.enabled and n.ready() is False
    assert SystemdNotifier(str(tmp_path / "gone.sock")).ready() is False


def test_watchdog_interval_is_half_the_timeout_for_this_process() -> None:
    assert watchdog_interval({"WATCHDOG_USEC": "30000000"}) == 15.0
    assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "42"}, pid=42) == 15.0
    assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "41"}, pid=42) is None
    assert watchdog_interval({}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "0"}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "soon"}) is None


async def test_watchdog_loop_pings_until_cancelled(tmp_path: Path) -> None:
    path = str(tmp_path / "wd.sock")
    with notify_socket(path) as sock:
        task = asyncio.create_task(watchdog_loop(SystemdNotifier(path), 0.01))
        pings = [await asyncio.to_thread(sock.recv, 64) for _ in range(3)]
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert pings == [b"WATCHDOG=1"] * 3


# --- the installer ----------------------------------------------------------------------------


class FakeRunner:
    def __init__(self, fail: set[str] | None = None) -> None:
        self.calls: list[list[str]] = []
        self.fail = fail or set()

    def __call__(self, argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
        self.calls.append(list(argv))
        code = 1 if argv[0] in self.fail else 0
        out = "created token 'admin'\n    apl_secret" if "token" in argv else ""
        return subprocess.CompletedProcess(
            list(argv), code, out, "useradd: no permission" if code else ""
        )


def installer(
    tmp_path: Path,
    runner: FakeRunner,
    *,
    user: str = "appliance-test-nobody",
    is_root: bool = True,
    python: str = "/opt/appliance/.venv/bin/python",
) -> ServiceInstaller:
    paths = ServicePaths(
        unit_dir=tmp_path / "etc/systemd/system",
        config_dir=tmp_path / "etc/appliance",
        state_dir=tmp_path / "var/lib/appliance",
        cache_dir=tmp_path / "var/cache/appliance",
    )
    return ServiceInstaller(
        paths, run=runner, python=python, user=user, is_root=is_root, chown=lambda path, user: None
    )


def test_install_writes_unit_and_config_creates_user_and_starts(tmp_path: Path) -> None:
    runner = FakeRunner()
    inst = installer(tmp_path, runner)
    steps = inst.install(port=8500)
    unit = (tmp_path / "etc/systemd/system/appliance.service").read_text()
    assert "ExecStart=/opt/appliance/.venv/bin/python -m appliance serve --config " in unit
    assert f"{tmp_path}/etc/appliance/config.toml" in unit
    assert (
        "User=appliance-test-nobody" in unit and "Type=notify" in unit and "ProtectHome=yes" in unit
    )
    config = (tmp_path / "etc/appliance/config.toml").read_text()
    assert 'host = "127.0.0.1"' in config and "port = 8500" in config
    assert (tmp_path / "var/lib/appliance").is_dir()
    assert (
        runner.calls[0][:2] == ["useradd", "--system"]
        and runner.calls[0][-1] == "appliance-test-nobody"
    )
    assert runner.calls[-2:] == [
        ["systemctl", "daemon-reload"],
        ["systemctl", "enable", "--now", "appliance.service"],
    ]
    assert any("journalctl" in s for s in steps)


def test_reinstall_keeps_an_edited_config(tmp_path: Path) -> None:
    inst = installer(tmp_path, FakeRunner())
    inst.install()
    cfg = tmp_path / "etc/appliance/config.toml"
    cfg.write_text("[server]\nport = 9000\n")
    installer(tmp_path, FakeRunner()).install(start=False)
    assert cfg.read_text() == "[server]\nport = 9000\n"


def test_network_bind_needs_a_token_and_install_creates_it(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--token"):
        installer(tmp_path, FakeRunner()).install(host="0.0.0.0")
    runner = FakeRunner()
    steps = installer(tmp_path, runner).install(host="0.0.0.0", token="admin")
    token_call = next(c for c in runner.calls if "token" in c)
    assert token_call[-4:] == [
        "create",
        "admin",
        "--config",
        f"{tmp_path}/etc/appliance/config.toml",
    ]
    assert any("apl_secret" in s for s in steps), "the new token is shown to the installer once"


def test_install_from_a_home_directory_relaxes_protect_home(tmp_path: Path) -> None:
    steps = installer(
        tmp_path, FakeRunner(), python="/home/pi/appliance/.venv/bin/python"
    ).install()
    unit = (tmp_path / "etc/systemd/system/appliance.service").read_text()
    assert "ProtectHome=read-only" in unit
    assert any("ProtectHome=read-only" in s for s in steps)


def test_install_needs_root_and_reports_failed_commands(tmp_path: Path) -> None:
    with pytest.raises(ApplianceError, match="sudo"):
        installer(tmp_path, FakeRunner(), is_root=False).install()
    with pytest.raises(ApplianceError, match=r"useradd.*no permission"):
        installer(tmp_path, FakeRunner(fail={"useradd"})).install()


def test_uninstall_keeps_data_unless_purged(tmp_path: Path) -> None:
    installer(tmp_path, FakeRunner()).install()
    runner = FakeRunner()
    steps = installer(tmp_path, runner).uninstall()
    assert not (tmp_path / "etc/systemd/system/appliance.service").exists()
    assert (tmp_path / "etc/appliance/config.toml").exists() and (
        tmp_path / "var/lib/appliance"
    ).exists()
    assert runner.calls[0] == ["systemctl", "disable", "--now", "appliance.service"]
    assert any("--purge" in s for s in steps)
    installer(tmp_path, FakeRunner()).uninstall(purge=True)
    assert (
        not (tmp_path / "etc/appliance").exists() and not (tmp_path / "var/lib/appliance").exists()
    )


def test_status_reads_systemctl(tmp_path: Path) -> None:
    class Status(FakeRunner):
        def __call__(self, argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
            answer = {"is-enabled": "enabled\n", "is-active": "active\n"}[argv[1]]
            return subprocess.CompletedProcess(list(argv), 0, answer, "")

    st = installer(tmp_path, Status()).status()
    assert st["enabled"] == "enabled" and st["active"] == "active" and st["unit"] == "not installed"


def test_rendering_replaces_only_the_install_specific_lines() -> None:
    template = shipped_unit_path().read_text()
    unit = render_unit(
        template, python="/usr/bin/python3", user="svc", config=Path("/etc/a/c.toml")
    )
    changed = [
        (a, b) for a, b in zip(template.splitlines(), unit.splitlines(), strict=True) if a != b
    ]
    assert [b for _, b in changed] == [
        "ExecStart=/usr/bin/python3 -m appliance serve --config /etc/a/c.toml",
        "User=svc",
        "Group=svc",
    ]
    assert 'state_dir = "/var/lib/appliance"' in default_config(
        host="127.0.0.1", port=8420, state_dir=Path("/var/lib/appliance")
    )
