"""The model-id hijack chain of issue 9, against a live daemon: a GGUF written into a sandbox
workspace cannot be registered, an existing id is not re-pointed without replace (and with
tokens, not without one), and a refusal writes nothing to the config directory."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.daemon import REPO, Daemon, running_daemon

CHAT = [{"role": "user", "content": "hi"}]


@pytest.fixture
def daemon(tiny_model_path: Path, tmp_path: Path) -> Iterator[Daemon]:
    models = {"smollm2-135m-instruct": {"source": str(tiny_model_path), "context_size": 256}}
    with running_daemon(tmp_path, models=models) as d:
        yield d


def profiles_written(d: Daemon) -> list[str]:
    user_models = d.root / "models"  # the config directory's models/: where registrations persist
    return sorted(p.name for p in user_models.glob("*.toml")) if user_models.is_dir() else []


def test_a_workspace_file_never_becomes_a_model(daemon: Daemon, tiny_model_path: Path) -> None:
    # what code in a sandbox can do: write a GGUF into its workspace, whose host path it can read
    workspace = daemon.state_dir / "sandboxes" / "sbx_attacker"
    workspace.mkdir(parents=True)
    planted = workspace / "evil.gguf"
    shutil.copy(tiny_model_path, planted)
    link = daemon.state_dir / "models" / "innocent.gguf"
    link.symlink_to(planted)
    with daemon.http() as c:
        for path in (planted, link, tiny_model_path):  # the last: a file in the shared /tmp
            for body in (
                {"path": str(path)},
                {"path": str(path), "id": "smollm2-135m-instruct", "replace": True},
            ):
                r = c.post("/api/models", json=body)
                assert r.status_code == 400, r.text
                err = r.json()["error"]
                assert err["code"] == "model_path_not_allowed" and err["param"] == "path"
                assert "model directory" in err["message"]
        assert daemon.model("smollm2-135m-instruct")["source"] == str(tiny_model_path)
    assert profiles_written(daemon) == []


def test_an_existing_id_is_re_pointed_only_on_request(
    daemon: Daemon, tiny_model_path: Path
) -> None:
    fresh = daemon.state_dir / "models" / "fresh.gguf"
    shutil.copy(tiny_model_path, fresh)
    with daemon.http() as c:
        assert (
            c.post(
                "/v1/chat/completions",
                json={"model": "smollm2-135m-instruct", "messages": CHAT, "max_tokens": 2},
            ).status_code
            == 200
        )
        r = c.post("/api/models", json={"path": str(fresh), "id": "smollm2-135m-instruct"})
        assert r.status_code == 409, r.text
        assert (
            r.json()["error"]["code"] == "model_exists"
            and "replace" in r.json()["error"]["message"]
        )
        assert profiles_written(daemon) == []
        r = c.post("/api/models", json={"path": str(fresh)})
        assert r.status_code == 201 and r.json()["id"] == "fresh"
        # the spare worker was started before fresh.gguf existed; a jailed one still sees models/
        r = c.post(
            "/v1/chat/completions", json={"model": "fresh", "messages": CHAT, "max_tokens": 2}
        )
        assert r.status_code == 200, r.text
        r = c.post(
            "/api/models", json={"path": str(fresh), "id": "smollm2-135m-instruct", "replace": True}
        )
        assert r.status_code == 201, r.text
        m = daemon.model("smollm2-135m-instruct")
        assert m["source"] == str(fresh) and m["state"] == "unloaded", (
            "the old file's worker is gone"
        )
    assert profiles_written(daemon) == ["fresh.toml", "smollm2-135m-instruct.toml"]


def test_with_tokens_a_replacement_needs_one(daemon: Daemon, tiny_model_path: Path) -> None:
    fresh = daemon.state_dir / "models" / "fresh.gguf"
    shutil.copy(tiny_model_path, fresh)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "appliance",
            "token",
            "create",
            "admin",
            "--state-dir",
            str(daemon.state_dir),
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=True,
    )
    token = re.search(r"apl_\S+", done.stdout)
    assert token is not None
    body = {"path": str(fresh), "id": "smollm2-135m-instruct", "replace": True}
    with daemon.http() as c:
        assert c.post("/api/models", json=body).status_code == 401
        assert profiles_written(daemon) == []
        r = c.post("/api/models", json=body, headers={"Authorization": f"Bearer {token.group(0)}"})
        assert r.status_code == 201, r.text
