"""Language profiles: profiles/sandboxes/*.toml, read strictly, with their toolchains resolved.

A profile says how to run one language: the tools it needs, the source file name, an optional
compile command, the run command, an optional REPL driver for stateful sandboxes and warm pools,
and default limits. Commands are argument lists with placeholders: `{<tool>}` (the tool's real
path), `{file}`, `{memory_mb}` and `{heap_mb}`. Unknown keys and unknown placeholders are errors
that name the file and the key.

Shipped profiles load first; later directories (config `sandbox.profile_dirs`, then
`<config dir>/sandboxes/`) replace a profile of the same name.
"""

from __future__ import annotations

import glob
import logging
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import msgspec

from appliance.config import load_toml_struct
from appliance.errors import ConfigError, ToolchainMissing
from appliance.sandbox.errors import LanguageNotFound
from appliance.sandbox.images.runtime import ImageRoot, find_in_image, image_path_dirs
from appliance.sandbox.limits import (
    DEFAULT_COMPILE_LIMITS,
    DEFAULT_LIMITS,
    ProfileLimits,
    SandboxLimits,
)
from appliance.sandbox.policy import DRIVER_DIR
from appliance.sandbox.toolchain import ResolvedTool, ToolSpec, resolve_tool

log = logging.getLogger("appliance.sandbox")

DRIVERS = {"python": "python_driver.py", "node": "node_driver.js"}
"""REPL driver kinds and their files in appliance/sandbox/repl/."""
_PLACEHOLDER = re.compile(r"\{([a-z_][a-z0-9_]*)\}")
_FIXED_PLACEHOLDERS = {"file", "memory_mb", "heap_mb"}


class LanguageProfile(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    name: str
    """Language name used in requests (defaults to the file name)."""
    title: str = ""
    """Human name shown in listings."""
    aliases: list[str] = msgspec.field(default_factory=list)
    """Other names accepted in requests (py, js, ...)."""
    file: str
    """Name of the source file in the workspace."""
    tools: dict[str, ToolSpec]
    """Executables the language needs, by placeholder name."""
    compile: list[str] = msgspec.field(default_factory=list)
    """Compile command (empty for interpreted languages). A non-zero exit is a compile error."""
    run: list[str]
    """Run command; request args are appended."""
    repl: Literal["", "python", "node"] = ""
    """REPL driver for stateful sandboxes and the warm pool (empty: each exec is a fresh run)."""
    driver_run: list[str] = msgspec.field(default_factory=list)
    """The command that starts the REPL driver ({file} is the driver), when it is not `run`:
    Python's starts with -S, the driver then putting site-packages on sys.path itself."""
    binds: list[str] = msgspec.field(default_factory=list)
    """Extra host paths (globs allowed) bound read-only when they exist."""
    env: dict[str, str] = msgspec.field(default_factory=dict)
    """Extra environment variables inside the sandbox."""
    limits: ProfileLimits = msgspec.field(default_factory=ProfileLimits)
    """Default limits of a run."""
    compile_limits: ProfileLimits = msgspec.field(default_factory=ProfileLimits)
    """Limits of the compile step."""
    oom_patterns: list[str] = msgspec.field(default_factory=list)
    """Output fragments that mean the program ran out of memory (besides the generic ones)."""
    image: str = ""
    """An image (a reference in `appliance images list`) this language always runs in, its
    tools looked up inside the image: a language the host lacks (Ruby, Lua) from an image."""


def _check_placeholders(profile: LanguageProfile, file: str) -> None:
    known = _FIXED_PLACEHOLDERS | set(profile.tools)
    for key in ("compile", "run", "driver_run"):
        for i, arg in enumerate(getattr(profile, key)):
            for name in _PLACEHOLDER.findall(arg):
                if name not in known:
                    raise ConfigError(
                        f"unknown placeholder {{{name}}}; use one of "
                        f"{', '.join(sorted('{' + k + '}' for k in known))}",
                        file=file,
                        key=f"{key}[{i}]",
                    )
    if profile.repl and not any("{file}" in a for a in profile.driver_run or profile.run):
        key = "driver_run" if profile.driver_run else "run"
        raise ConfigError(
            f"a profile with a repl driver needs {{file}} in its {key} command", file=file, key=key
        )
    if not profile.run:
        raise ConfigError("run must name the command that runs the program", file=file, key="run")


def load_profile(path: Path) -> LanguageProfile:
    profile = load_toml_struct(path, LanguageProfile, extra={"name": path.stem})
    _check_placeholders(profile, str(path))
    return profile


def _fill(template: list[str], values: dict[str, str]) -> list[str]:
    return [_PLACEHOLDER.sub(lambda m: values[m.group(1)], arg) for arg in template]


@dataclass
class ResolvedLanguage:
    """A profile whose tools were found on this host."""

    profile: LanguageProfile
    tools: dict[str, ResolvedTool]
    extra_binds: list[str] = field(default_factory=list)
    image: ImageRoot | None = None
    """The image whose root the sandbox runs in; None: the host's toolchains."""

    @property
    def name(self) -> str:
        return self.profile.name

    @property
    def limits(self) -> SandboxLimits:
        return DEFAULT_LIMITS.merged(self.profile.limits)

    @property
    def compile_limits(self) -> SandboxLimits:
        return DEFAULT_COMPILE_LIMITS.merged(self.profile.compile_limits)

    @property
    def toolchain_roots(self) -> list[str]:
        return [t.root for t in self.tools.values() if t.root]

    @property
    def path_dirs(self) -> list[str]:
        return [t.bin_dir for t in self.tools.values()]

    def _values(self, limits: SandboxLimits, file: str) -> dict[str, str]:
        values = {name: tool.exe for name, tool in self.tools.items()}
        values.update(file=file, memory_mb=str(limits.memory_mb), heap_mb=str(limits.heap_mb))
        return values

    def compile_argv(self, limits: SandboxLimits) -> list[str]:
        return _fill(self.profile.compile, self._values(limits, self.profile.file))

    def run_argv(self, limits: SandboxLimits, args: list[str]) -> list[str]:
        return [*_fill(self.profile.run, self._values(limits, self.profile.file)), *args]

    def driver_argv(self, limits: SandboxLimits, result_fd: int) -> list[str]:
        """The run command with the REPL driver in place of the source file."""
        driver = f"{DRIVER_DIR}/{DRIVERS[self.profile.repl]}"
        command = self.profile.driver_run or self.profile.run
        return [*_fill(command, self._values(limits, driver)), str(result_fd)]


COMMAND_PROFILE = LanguageProfile(name="command", file=".command", tools={}, run=["/bin/sh"])
"""The profile of an image run that names its own argv (`image` + `command`)."""


def resolve_in_image(profile: LanguageProfile, image: ImageRoot) -> ResolvedLanguage:
    """`profile` with its tools looked up inside the image (probes are not run: they would
    run the image's programs on the host), or ToolchainMissing naming the image."""
    dirs = image_path_dirs(image)
    tools: dict[str, ResolvedTool] = {}
    for name, spec in profile.tools.items():
        exe = find_in_image(image.path, spec.find, dirs)
        if exe is None:
            raise ToolchainMissing(
                f"language {profile.name!r} needs {' or '.join(spec.find)}, which image "
                f"{image.name} does not have (searched {':'.join(dirs)}); use an image with it, "
                "or run a `command` instead",
                param="image",
            )
        tools[name] = ResolvedTool(name, exe, None)
    return ResolvedLanguage(profile, tools, [], image)


@dataclass(frozen=True)
class LanguageInfo:
    name: str
    title: str
    aliases: list[str]
    available: bool
    compiled: bool
    stateful_repl: bool
    detail: str
    """The resolved tools, or why the toolchain is missing."""


class ProfileCatalog:
    """Every language profile, with toolchains resolved on first use and cached."""

    def __init__(self, profiles: dict[str, LanguageProfile]) -> None:
        self.profiles = profiles
        self._aliases: dict[str, str] = {}
        for p in profiles.values():
            for alias in p.aliases:
                self._aliases.setdefault(alias, p.name)
        self._resolved: dict[str, ResolvedLanguage | ToolchainMissing] = {}
        self._lock = threading.Lock()

    @classmethod
    def load(cls, dirs: list[Path]) -> ProfileCatalog:
        profiles: dict[str, LanguageProfile] = {}
        for d in dirs:
            if not d.is_dir():
                continue
            for path in sorted(d.glob("*.toml")):
                profile = load_profile(path)
                profiles[profile.name] = profile
        return cls(profiles)

    def canonical(self, name: str) -> str:
        key = name.strip().lower()
        if key in self.profiles:
            return key
        if key in self._aliases:
            return self._aliases[key]
        raise LanguageNotFound(
            f"unknown language {name!r}; available: {', '.join(sorted(self.profiles))}. "
            "See GET /api/sandboxes/languages",
            param="language",
        )

    def get(self, name: str) -> LanguageProfile:
        return self.profiles[self.canonical(name)]

    def resolve(self, name: str) -> ResolvedLanguage:
        """The language ready to run, or ToolchainMissing saying what to install."""
        key = self.canonical(name)
        with self._lock:
            cached = self._resolved.get(key)
            if cached is None:
                cached = self._resolve_uncached(self.profiles[key])
                self._resolved[key] = cached
        if isinstance(cached, ToolchainMissing):
            raise ToolchainMissing(cached.message, param="language")
        return cached

    def resolved(self, name: str) -> ResolvedLanguage | None:
        """The language if it was resolved before (no probes run), else None."""
        cached = self._resolved.get(self.canonical(name))
        if isinstance(cached, ToolchainMissing):
            raise ToolchainMissing(cached.message, param="language")
        return cached

    def _resolve_uncached(self, profile: LanguageProfile) -> ResolvedLanguage | ToolchainMissing:
        try:
            tools = {name: resolve_tool(name, spec) for name, spec in profile.tools.items()}
        except ToolchainMissing as exc:
            log.info("language %s unavailable: %s", profile.name, exc.message)
            return ToolchainMissing(
                f"language {profile.name!r} is not available here: {exc.message}"
            )
        binds = sorted({hit for pattern in profile.binds for hit in glob.glob(pattern)})
        return ResolvedLanguage(profile, tools, binds)

    def describe(self) -> list[LanguageInfo]:
        out = []
        for name in sorted(self.profiles):
            p = self.profiles[name]
            try:
                lang = self.resolve(name)
                detail = ", ".join(f"{t.name}={t.exe}" for t in lang.tools.values())
                available = True
            except ToolchainMissing as exc:
                detail, available = exc.message, False
            out.append(
                LanguageInfo(
                    name,
                    p.title or name,
                    list(p.aliases),
                    available,
                    bool(p.compile),
                    bool(p.repl),
                    detail,
                )
            )
        return out
