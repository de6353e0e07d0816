"""Agent profiles: agents declared in TOML files and upserted into the database at start-up.

Profiles are read from, in order: the shipped `profiles/agents/`, the config directory's
`agents/`, then each of `[agents] profile_dirs`. A later file with the same agent name replaces an
earlier one, which is how a box overrides a shipped agent. The agent's name defaults to the file
name without `.toml`. Unknown keys and bad values are ConfigErrors naming the file and the key,
never silently ignored.

A profile file looks like:

    description = "Writes and runs Python to answer"
    model = "smollm2-135m-instruct"
    persona = "You are a careful programmer..."
    tools = ["run_code"]
    sandbox = "python"

    [params]
    temperature = 0.2
    max_tokens = 1024
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import msgspec

from appliance.config import Config, load_toml_struct, shipped_profiles_dir
from appliance.errors import ApplianceError, ConfigError
from appliance.store.agents import Agent, Agents, AgentSpec, validate_spec


class AgentProfile(AgentSpec, forbid_unknown_fields=True, kw_only=True):
    """One `profiles/agents/*.toml` file: an agent's writable fields (AgentSpec), where `name`
    defaults to the file name without `.toml`."""

    def spec(self) -> AgentSpec:
        return AgentSpec(**msgspec.structs.asdict(self))


class LoadedAgentProfile(msgspec.Struct, frozen=True, kw_only=True):
    profile: AgentProfile
    path: Path


def agent_profile_dirs(config: Config) -> list[Path]:
    """Where agent profiles are read from, lowest precedence first."""
    dirs = [shipped_profiles_dir() / "agents"]
    if config.config_dir:
        dirs.append(Path(config.config_dir) / "agents")
    dirs.extend(Path(d).expanduser() for d in config.agents.profile_dirs)
    return dirs


def load_agent_profile(path: Path) -> AgentProfile:
    """Read and validate one profile file; ConfigError naming file:key when it is wrong."""
    profile = load_toml_struct(path, AgentProfile, extra={"name": path.stem})
    try:
        validate_spec(profile.spec())
    except ApplianceError as exc:
        raise ConfigError(exc.message, file=str(path), key=exc.param) from exc
    return profile


def load_agent_profiles(dirs: Sequence[Path]) -> dict[str, LoadedAgentProfile]:
    """Every profile in `dirs` (missing directories are skipped), keyed by agent name.

    A later directory overrides an earlier one; two files of one directory defining the same
    name are a ConfigError.
    """
    loaded: dict[str, LoadedAgentProfile] = {}
    for directory in dirs:
        if not directory.is_dir():
            continue
        seen_here: dict[str, Path] = {}
        for path in sorted(directory.glob("*.toml")):
            profile = load_agent_profile(path)
            if profile.name in seen_here:
                raise ConfigError(
                    f"agent {profile.name!r} is also defined in {seen_here[profile.name]}; "
                    "rename one of them",
                    file=str(path),
                    key="name",
                )
            seen_here[profile.name] = path
            loaded[profile.name] = LoadedAgentProfile(profile=profile, path=path)
    return loaded


def sync_agent_profiles(agents: Agents, profiles: Iterable[LoadedAgentProfile]) -> list[Agent]:
    """Upsert each profile as a `source = "profile"` agent (one transaction each); returns the
    agents as stored. Blocking: call from a worker thread (`await store.run(...)`)."""
    return [agents.upsert_profile(p.profile.spec(), str(p.path)) for p in profiles]
