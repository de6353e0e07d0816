"""Find a language's tools on the host and the smallest tree to bind for each.

A profile names tools by the commands a user would type (`python3`, `rustc`). Those are often
indirections: a pyenv shim (a shell script that needs pyenv), a rustup proxy, an
/etc/alternatives symlink. Inside the sandbox only the real thing works, so each tool resolves
to its real executable, found either by following symlinks or by asking the tool itself (a
profile's `probe`, for example `python3 -c 'print(sys.executable)'` or `rustc --print sysroot`).

Tools under /usr need no extra mount (every sandbox sees /usr read-only). Anything else binds its
installation root, the directory above its `bin/` (a pyenv version, a rustup toolchain) — never
a home directory or / itself, in which case only the executable file is bound.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import msgspec

from appliance.errors import ToolchainMissing

SYSTEM_PREFIXES = ("/usr/", "/bin/", "/sbin/", "/lib/", "/lib64/")
DEFAULT_SEARCH_PATH = "/usr/local/bin:/usr/bin:/bin"
UNSAFE_ROOTS = frozenset(
    {"/", "/home", "/root", "/opt", "/srv", "/var", "/tmp", "/etc", "/mnt", "/media"}
)


class ToolSpec(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """How a profile names one tool: `find` candidates, and an optional self-describing probe."""

    find: list[str]
    """Commands or absolute paths to try in order; the first that exists is used."""
    probe: list[str] = msgspec.field(default_factory=list)
    """Arguments that make the tool print its real executable, or its installation root (a
    directory with bin/<name> inside). Empty: follow symlinks instead."""


@dataclass(frozen=True)
class ResolvedTool:
    name: str
    exe: str
    """Real path of the executable the sandbox runs."""
    root: str | None
    """Host path to bind read-only for this tool (a directory, or the file itself); None when it
    lives under /usr."""

    @property
    def bin_dir(self) -> str:
        return str(Path(self.exe).parent)


def search_path() -> str:
    """The daemon's PATH plus the standard directories (systemd gives services a short PATH)."""
    parts = [p for p in os.environ.get("PATH", "").split(":") if p]
    parts += DEFAULT_SEARCH_PATH.split(":")
    return ":".join(dict.fromkeys(parts))


def _home_dirs() -> set[str]:
    homes = {str(Path.home())}
    try:
        import pwd

        homes.update(p.pw_dir for p in pwd.getpwall() if p.pw_dir)
    except (ImportError, KeyError):
        pass
    return {os.path.realpath(h) for h in homes}


def install_root(exe: str) -> str | None:
    """The tree to bind for a real executable path (see the module docstring)."""
    if exe.startswith(SYSTEM_PREFIXES):
        return None
    path = Path(exe)
    if path.parent.name == "bin":
        root = str(path.parent.parent)
        if root not in UNSAFE_ROOTS and root not in _home_dirs():
            return root
    return exe


def _probe(exe: str, probe: list[str], name: str) -> str:
    try:
        out = subprocess.run([exe, *probe], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ToolchainMissing(f"{name}: running {exe} {' '.join(probe)} failed ({exc})") from exc
    lines = [ln.strip() for ln in out.stdout.splitlines() if ln.strip()]
    if out.returncode != 0 or not lines:
        detail = (out.stderr or out.stdout).strip().splitlines()[-1:] or ["no output"]
        raise ToolchainMissing(
            f"{name}: {exe} {' '.join(probe)} failed ({detail[0]}); check that the toolchain works "
            "on the host"
        )
    return lines[-1]


def resolve_tool(name: str, spec: ToolSpec, *, path: str | None = None) -> ResolvedTool:
    """Find `spec` on this host, or raise ToolchainMissing saying what was tried."""
    path = path or search_path()
    found: str | None = None
    for candidate in spec.find:
        if os.path.isabs(candidate):
            if os.access(candidate, os.X_OK) and os.path.isfile(candidate):
                found = candidate
                break
        else:
            hit = shutil.which(candidate, path=path)
            if hit:
                found = hit
                break
    if found is None:
        raise ToolchainMissing(
            f"{name}: none of {', '.join(spec.find)} is installed on this host (searched {path}); "
            "install the toolchain or choose another language"
        )
    if spec.probe:
        answer = _probe(found, spec.probe, name)
        if os.path.isdir(answer):
            exe = os.path.realpath(os.path.join(answer, "bin", os.path.basename(spec.find[0])))
            if not os.access(exe, os.X_OK):
                raise ToolchainMissing(
                    f"{name}: {answer} has no bin/{os.path.basename(spec.find[0])}"
                )
            root = os.path.realpath(answer)
            if root.startswith(SYSTEM_PREFIXES):
                return ResolvedTool(name, exe, None)
            return ResolvedTool(name, exe, root if root not in UNSAFE_ROOTS else exe)
        found = answer
    exe = os.path.realpath(found)
    if not (os.path.isfile(exe) and os.access(exe, os.X_OK)):
        raise ToolchainMissing(f"{name}: {found} resolves to {exe}, which is not an executable")
    return ResolvedTool(name, exe, install_root(exe))
