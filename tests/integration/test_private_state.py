"""Private state: other local users cannot read transcripts, KV state or workspaces.

Run from a shell with the usual umask 022, the database and the parked `*.kv` files used to be
0644: anyone on the box could read every transcript with `sqlite3` while the API told them 401.
Now `appliance serve` sets umask 077, and the appliance's own writes set 0600/0700 themselves, so
library use under any umask is private too.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.config import Config
from appliance.host.doctor import run_doctor
from appliance.models.catalog import ModelCatalog
from appliance.models.profile import ModelProfile
from appliance.models.worker.kvfile import write_kv_file
from appliance.store import Store
from tests.integration.daemon import running_daemon
from tests.unit.test_ops_doctor import healthy

SANDBOX_ETC = "sandboxes/.etc"
"""The sandbox's own passwd/group/hosts: the sandbox user must read them (0644 in a 0755 dir),
behind the 0700 state and sandboxes directories."""


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


@pytest.fixture
def umask_022() -> Iterator[None]:
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def others_can_reach(root: Path) -> list[str]:
    """Entries under `root` (itself included) that group or other users may read or enter."""
    out = []
    for path in [root, *root.rglob("*")]:
        rel = path.relative_to(root).as_posix()
        if rel == SANDBOX_ETC or rel.startswith(SANDBOX_ETC + "/") or path.is_symlink():
            continue
        if mode(path) & 0o077:
            out.append(f"{rel or '.'} {mode(path):04o}")
    return out


def test_the_store_is_private_under_umask_022(tmp_path: Path, umask_022: None) -> None:
    state = tmp_path / "state"
    with Store(state) as store:
        store.tokens.create("t")  # a write: the WAL and SHM exist now
        db = state / "appliance.db"
        assert mode(state) == 0o700
        for path in (db, db.with_name("appliance.db-wal"), db.with_name("appliance.db-shm")):
            assert path.exists() and mode(path) == 0o600, (path, oct(mode(path)))


def test_an_older_readable_state_is_tightened_when_opened(tmp_path: Path, umask_022: None) -> None:
    state = tmp_path / "state"
    Store(state).close()
    db = state / "appliance.db"
    state.chmod(0o755)
    db.chmod(0o644)
    with Store(state):
        assert mode(state) == 0o700 and mode(db) == 0o600


def test_kv_files_and_registered_profiles_are_private(tmp_path: Path, umask_022: None) -> None:
    kv = tmp_path / "kv" / "0123456789abcdef" / "ses_1.kv"
    write_kv_file(kv, [1, 2, 3], b"state")
    assert mode(kv) == 0o600 and mode(kv.parent) == 0o700
    catalog = ModelCatalog.load(
        Config(state_dir=str(tmp_path / "state"), config_dir=str(tmp_path / "cfg"))
    )
    written = catalog.add(ModelProfile(id="mine", source=str(tmp_path / "m.gguf")))
    assert mode(written) == 0o600


def test_the_daemon_keeps_its_state_private_whatever_the_umask(tmp_path: Path) -> None:
    with running_daemon(tmp_path, preexec_fn=lambda: os.umask(0o022)) as d, d.http() as c:
        assert (
            c.post(
                "/api/agents",
                json={"name": "private", "model": "smollm2-135m-instruct", "persona": "secret"},
            ).status_code
            == 201
        )
        assert c.post("/api/sessions", json={"agent": "private"}).status_code == 201
        state = d.state_dir
        assert mode(state) == 0o700
        assert mode(state / "appliance.db") == 0o600 and mode(state / "appliance.db-wal") == 0o600
        assert others_can_reach(state) == []


def test_doctor_warns_about_a_state_dir_others_can_read(tmp_path: Path) -> None:
    state = tmp_path / "state"
    Store(state).close()
    probes = healthy(tmp_path)
    fine = next(r for r in run_doctor(None, None, probes) if r.name == "state directory")
    assert fine.status == "ok", fine
    state.chmod(0o755)
    (state / "appliance.db").chmod(0o644)
    warned = next(r for r in run_doctor(None, None, probes) if r.name == "state directory")
    assert warned.status == "warning"
    assert "other users can read" in warned.detail and "appliance.db (mode 0644)" in warned.detail
    assert "chmod 700" in warned.fix
