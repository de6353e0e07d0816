"""Agent profile files: the shipped ones load; mistakes are errors naming file and key."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.config import Config, shipped_profiles_dir
from appliance.errors import ConfigError
from appliance.store.agent_profiles import (
    agent_profile_dirs,
    load_agent_profile,
    load_agent_profiles,
)


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_shipped_profiles_define_an_assistant_and_a_code_agent() -> None:
    loaded = load_agent_profiles([shipped_profiles_dir() / "agents"])
    assistant, coder = loaded["assistant"].profile, loaded["coder"].profile
    assert assistant.model == coder.model == "smollm2-135m-instruct"
    assert assistant.tools == [] and assistant.persona
    assert coder.tools == ["run_code"] and coder.sandbox == "python"
    assert coder.params.temperature is not None


def test_unknown_key_names_the_file_and_the_key(tmp_path: Path) -> None:
    path = write(tmp_path / "bot.toml", 'model = "m"\npersonna = "typo"\n')
    with pytest.raises(ConfigError) as err:
        load_agent_profile(path)
    assert err.value.file == str(path) and err.value.key == "personna"
    assert str(err.value).startswith(f"{path}:personna:")


def test_unknown_nested_param_names_its_dotted_key(tmp_path: Path) -> None:
    path = write(tmp_path / "bot.toml", 'model = "m"\n[params]\ntemprature = 0.1\n')
    with pytest.raises(ConfigError) as err:
        load_agent_profile(path)
    assert err.value.key == "params.temprature"


def test_out_of_range_param_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path / "bot.toml", 'model = "m"\n[params]\ntemperature = -1\n')
    with pytest.raises(ConfigError) as err:
        load_agent_profile(path)
    assert err.value.key == "params.temperature"


def test_missing_model_and_bad_name_are_reported(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="model"):
        load_agent_profile(write(tmp_path / "nomodel.toml", 'persona = "x"\n'))
    with pytest.raises(ConfigError) as err:
        load_agent_profile(write(tmp_path / "bad.toml", 'name = "two words"\nmodel = "m"\n'))
    assert err.value.key == "name"


def test_name_defaults_to_the_file_name(tmp_path: Path) -> None:
    assert load_agent_profile(write(tmp_path / "helper.toml", 'model = "m"\n')).name == "helper"


def test_a_later_directory_overrides_by_name(tmp_path: Path) -> None:
    write(tmp_path / "shipped" / "helper.toml", 'model = "small"\n')
    write(tmp_path / "shipped" / "other.toml", 'model = "small"\n')
    write(tmp_path / "local" / "mine.toml", 'name = "helper"\nmodel = "big"\n')
    loaded = load_agent_profiles([tmp_path / "shipped", tmp_path / "missing", tmp_path / "local"])
    assert loaded["helper"].profile.model == "big"
    assert loaded["helper"].path == tmp_path / "local" / "mine.toml"
    assert loaded["other"].profile.model == "small"


def test_two_files_of_one_directory_may_not_share_a_name(tmp_path: Path) -> None:
    write(tmp_path / "a.toml", 'name = "same"\nmodel = "m"\n')
    write(tmp_path / "b.toml", 'name = "same"\nmodel = "m"\n')
    with pytest.raises(ConfigError, match="also defined"):
        load_agent_profiles([tmp_path])


def test_profile_dirs_come_from_the_config(tmp_path: Path) -> None:
    cfg = Config(config_dir=str(tmp_path / "etc"))
    cfg.agents.profile_dirs.append(str(tmp_path / "extra"))
    assert agent_profile_dirs(cfg) == [
        shipped_profiles_dir() / "agents",
        tmp_path / "etc" / "agents",
        tmp_path / "extra",
    ]
