"""`appliance service install|uninstall|status`: the appliance as a systemd system service.

Install creates a system user (`appliance`), its state directory (/var/lib/appliance), a config
under /etc/appliance (kept if one exists), writes the shipped unit
(packaging/systemd/appliance.service) to /etc/systemd/system with ExecStart pointing at the Python
running this command, reloads systemd and enables and starts the service. Optionally it creates
the first API token, which a non-loopback bind needs before the daemon will start. Uninstall
stops and removes the unit and keeps the data unless asked to purge it.

The commands it runs (useradd, systemctl...) go through `run`, and every path through
`ServicePaths`, so tests install into a temporary root with a fake runner.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from appliance.access import is_loopback
from appliance.errors import ApplianceError, ConfigError

UNIT = "appliance.service"
DEFAULT_USER = "appliance"

Runner = Callable[[Sequence[str]], "subprocess.CompletedProcess[str]"]


def run_command(argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, check=False)


def shipped_unit_path() -> Path:
    """The unit file shipped with the package (wheel) or the source checkout."""
    here = Path(__file__).resolve().parents[1]
    for candidate in (here / "_systemd" / UNIT, here.parent / "packaging" / "systemd" / UNIT):
        if candidate.is_file():
            return candidate
    raise ConfigError(f"the shipped {UNIT} was not found next to {here}; reinstall the appliance")


def render_unit(
    template: str, *, python: str, user: str, config: Path, protect_home: str = "yes"
) -> str:
    """The shipped unit with this install's interpreter, user and config path."""
    out = []
    for line in template.splitlines():
        key = line.split("=", 1)[0]
        if key == "ExecStart":
            line = f"ExecStart={python} -m appliance serve --config {config}"
        elif key == "User":
            line = f"User={user}"
        elif key == "Group":
            line = f"Group={user}"
        elif key == "ProtectHome":
            line = f"ProtectHome={protect_home}"
        out.append(line)
    return "\n".join(out) + "\n"


def default_config(*, host: str, port: int, state_dir: Path) -> str:
    return (
        "# Serverless AI Appliance: system service configuration (see README, configuration).\n"
        f'state_dir = "{state_dir}"\n\n'
        "[server]\n"
        f'host = "{host}"\n'
        f"port = {port}\n"
    )


@dataclass(frozen=True)
class ServicePaths:
    unit_dir: Path = Path("/etc/systemd/system")
    config_dir: Path = Path("/etc/appliance")
    state_dir: Path = Path("/var/lib/appliance")
    cache_dir: Path = Path("/var/cache/appliance")

    @property
    def unit(self) -> Path:
        return self.unit_dir / UNIT

    @property
    def config(self) -> Path:
        return self.config_dir / "config.toml"


class ServiceInstaller:
    def __init__(
        self,
        paths: ServicePaths | None = None,
        *,
        run: Runner = run_command,
        python: str = sys.executable,
        user: str = DEFAULT_USER,
        is_root: bool | None = None,
        chown: Callable[[Path, str], None] | None = None,
    ) -> None:
        self.paths = paths or ServicePaths()
        self.run = run
        self.python = python
        self.user = user
        self.is_root = os.geteuid() == 0 if is_root is None else is_root
        self.chown = chown or (lambda path, user: shutil.chown(path, user, user))
        self.log: list[str] = []

    def _need_root(self, action: str) -> None:
        if not self.is_root:
            raise ApplianceError(
                f"`appliance service {action}` changes system files; run it with sudo"
            )

    def _cmd(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        self.log.append("$ " + " ".join(argv))
        done = self.run(argv)
        if check and done.returncode != 0:
            raise ApplianceError(
                f"`{' '.join(argv)}` failed ({done.returncode}): "
                f"{(done.stderr or done.stdout).strip()}"
            )
        return done

    def _user_exists(self) -> bool:
        try:
            pwd.getpwnam(self.user)
            return True
        except KeyError:
            return False

    def install(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 8420,
        start: bool = True,
        token: str | None = None,
    ) -> list[str]:
        """Install (or update) the service; returns what was done, line by line."""
        self._need_root("install")
        p = self.paths
        if not is_loopback(host) and token is None:
            raise ConfigError(
                f"binding {host} (not loopback) needs an API token before the daemon will start; "
                "add --token NAME to create one now"
            )
        if self._user_exists():
            self.log.append(f"user {self.user} exists")
        else:
            self._cmd(
                "useradd",
                "--system",
                "--user-group",
                "--home-dir",
                str(p.state_dir),
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                self.user,
            )
        p.state_dir.mkdir(parents=True, exist_ok=True)
        p.state_dir.chmod(0o700)
        self.chown(p.state_dir, self.user)
        p.config_dir.mkdir(parents=True, exist_ok=True)
        if p.config.exists():
            self.log.append(f"kept {p.config}")
        else:
            p.config.write_text(default_config(host=host, port=port, state_dir=p.state_dir))
            p.config.chmod(0o644)
            self.log.append(f"wrote {p.config}")
        home = ("/home/", "/root/")
        protect = "read-only" if self.python.startswith(home) else "yes"
        if protect != "yes":
            self.log.append(
                f"note: {self.python} is under /home or /root, so the unit sets "
                f"ProtectHome=read-only; the user {self.user} must be able to read it"
            )
        unit = render_unit(
            shipped_unit_path().read_text(),
            python=self.python,
            user=self.user,
            config=p.config,
            protect_home=protect,
        )
        p.unit_dir.mkdir(parents=True, exist_ok=True)
        p.unit.write_text(unit)
        p.unit.chmod(0o644)
        self.log.append(f"wrote {p.unit}")
        if token is not None:
            done = self._cmd(
                self.python, "-m", "appliance", "token", "create", token, "--config", str(p.config)
            )
            self.log.append(done.stdout.strip())
        self._cmd("systemctl", "daemon-reload")
        self._cmd("systemctl", "enable", *(["--now"] if start else []), UNIT)
        self.log.append(
            f"{'enabled and started' if start else 'enabled'} {UNIT}; "
            "follow it with `journalctl -u appliance -f`"
        )
        return self.log

    def uninstall(self, *, purge: bool = False) -> list[str]:
        """Stop, disable and remove the unit; with purge, also the config, data and user."""
        self._need_root("uninstall")
        p = self.paths
        self._cmd("systemctl", "disable", "--now", UNIT, check=False)
        if p.unit.exists():
            p.unit.unlink()
            self.log.append(f"removed {p.unit}")
        self._cmd("systemctl", "daemon-reload")
        if purge:
            for d in (p.config_dir, p.state_dir, p.cache_dir):
                if d.exists():
                    shutil.rmtree(d)
                    self.log.append(f"removed {d}")
            if self._user_exists():
                self._cmd("userdel", self.user, check=False)
        else:
            self.log.append(f"kept {p.config_dir} and {p.state_dir} (use --purge to remove them)")
        return self.log

    def status(self) -> dict[str, str]:
        """Whether the unit is installed, enabled and running (no root needed)."""

        def state(*argv: str) -> str:
            done = self.run(argv)
            text = (done.stdout or done.stderr).strip()
            return text.splitlines()[0] if text else f"exit {done.returncode}"

        return {
            "unit": str(self.paths.unit) if self.paths.unit.exists() else "not installed",
            "enabled": state("systemctl", "is-enabled", UNIT),
            "active": state("systemctl", "is-active", UNIT),
            "config": str(self.paths.config) if self.paths.config.exists() else "missing",
        }
