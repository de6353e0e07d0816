"""Profile agents are upserted at start-up; API agents of the same name are left alone."""

from __future__ import annotations

from pathlib import Path

from appliance.config import shipped_profiles_dir
from appliance.store import AgentSpec, Store
from appliance.store.agent_profiles import load_agent_profiles, sync_agent_profiles


class FakeClock:
    def __init__(self) -> None:
        self.now = 1.0

    def __call__(self) -> float:
        return self.now


def test_shipped_profiles_sync_into_the_database_idempotently(tmp_path: Path) -> None:
    clock = FakeClock()
    profiles = load_agent_profiles([shipped_profiles_dir() / "agents"])
    with Store(tmp_path, clock=clock) as store:
        first = {a.name: a for a in sync_agent_profiles(store.agents, profiles.values())}
        assert {"assistant", "coder"} <= set(first)
        coder = store.agents.get("coder")
        assert coder.source == "profile" and coder.tools == ["run_code"]
        assert coder.source_path == str(shipped_profiles_dir() / "agents" / "coder.toml")
        clock.now = 50.0
        again = {a.name: a for a in sync_agent_profiles(store.agents, profiles.values())}
        assert again == first  # nothing changed, so nothing was rewritten


def test_a_changed_profile_updates_the_agent_in_place(tmp_path: Path) -> None:
    clock = FakeClock()
    d = tmp_path / "agents"
    d.mkdir()
    (d / "helper.toml").write_text('model = "small"\n')
    with Store(tmp_path / "state", clock=clock) as store:
        [before] = sync_agent_profiles(store.agents, load_agent_profiles([d]).values())
        session = store.sessions.create("helper")
        (d / "helper.toml").write_text('model = "big"\npersona = "New."\n')
        clock.now = 9.0
        [after] = sync_agent_profiles(store.agents, load_agent_profiles([d]).values())
        assert after.id == before.id and after.model == "big" and after.updated == 9.0
        assert store.sessions.get(session.id).agent_id == before.id


def test_an_api_agent_shadows_a_profile_of_the_same_name(tmp_path: Path) -> None:
    d = tmp_path / "agents"
    d.mkdir()
    (d / "helper.toml").write_text('model = "from-file"\n')
    with Store(tmp_path / "state") as store:
        mine = store.agents.create(AgentSpec(name="helper", model="from-api"))
        [kept] = sync_agent_profiles(store.agents, load_agent_profiles([d]).values())
        assert kept == mine and store.agents.get("helper").model == "from-api"


def test_an_agents_sandbox_image_is_stored_and_patched(tmp_path: Path) -> None:
    from appliance.store.agents import AgentPatch

    with Store(tmp_path / "state") as store:
        made = store.agents.create(
            AgentSpec(name="imaged", model="m", sandbox="sh", sandbox_image="localhost/bb:1")
        )
        assert store.agents.get(made.id).sandbox_image == "localhost/bb:1"
        store.agents.update(made.id, AgentPatch(sandbox_image=None))
        assert store.agents.get("imaged").sandbox_image is None
