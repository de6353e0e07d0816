"""API tokens end to end: every route of the app's route table refuses missing, wrong and revoked
tokens (so routes added later are covered without touching this test); a network bind without a
token refuses to start; the OpenAI SDK and the CLI honour the same tokens; tokens never reach the
log."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from appliance.api.app import create_app
from appliance.api.ollama import PATHS as OLLAMA_PATHS
from appliance.app import Appliance
from appliance.config import load_config
from tests.conftest import require
from tests.integration.daemon import REPO, free_port, running_daemon

SAMPLE = {str: "x1", int: "1", float: "1.5", Path: "dir/file.txt", uuid.UUID: str(uuid.uuid4())}


def concrete_requests(app: Any) -> list[tuple[str, str]]:
    """(method, path) for every route and method the app serves, path parameters filled in."""
    out = []
    for route in app.routes:
        path = route.path_format
        for name, param in route.path_parameters.items():
            path = path.replace("{" + name + "}", SAMPLE.get(param.type, "x1"))
        for method in sorted(getattr(route, "methods", None) or {"GET"}):
            out.append((method, path))
    return out


@pytest.fixture
async def app_and_tokens(tmp_path: Path) -> AsyncIterator[tuple[Any, dict[str, str]]]:
    """The real app over a real store (not started: a refused request never reaches a handler)."""
    config = load_config(None, state_dir=str(tmp_path / "state"))
    appliance = await asyncio.to_thread(
        Appliance.from_config, config
    )  # the store opens off the loop
    tokens = appliance.store.tokens
    good = await appliance.store.run(tokens.create, "good")
    revoked = await appliance.store.run(tokens.create, "old")
    await appliance.store.run(tokens.revoke, "old")
    yield (
        create_app(appliance, manage_lifecycle=False),
        {"good": good.plain, "revoked": revoked.plain},
    )
    await appliance.store.aclose()


async def test_every_route_but_health_refuses_missing_wrong_and_revoked_tokens(
    app_and_tokens: tuple[Any, dict[str, str]],
) -> None:
    app, tokens = app_and_tokens
    requests = concrete_requests(app)
    assert len(requests) > 20 and ("POST", "/v1/chat/completions") in requests
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as c:
        for header in (
            {},
            {"Authorization": "Bearer apl_wrong"},
            {"Authorization": f"Bearer {tokens['revoked']}"},
            {"Authorization": f"Basic {tokens['good']}"},
        ):
            for method, path in requests:
                r = await c.request(
                    method, path, headers=header, json={} if method in ("POST", "PUT") else None
                )
                if path == "/api/health":
                    assert r.status_code in (200, 204), (method, path)  # OPTIONS: 204
                    continue
                assert r.status_code == 401, (method, path, header, r.status_code, r.text)
                err = r.json()["error"]
                if path in OLLAMA_PATHS:  # Ollama's body: the message alone
                    assert "token" in err
                else:
                    assert err["type"] == "authentication_error"
                    assert err["code"] == "invalid_api_key"
                assert r.headers["WWW-Authenticate"].startswith("Bearer")
                assert r.headers["X-Trace-Id"].startswith("trc_")
                assert tokens["good"] not in r.text and tokens["revoked"] not in r.text
        r = await c.get("/not/a/route/at/all")
        assert r.status_code == 401, "unknown paths are refused too, revealing nothing"
        ok = await c.get("/v1/models", headers={"Authorization": f"Bearer {tokens['good']}"})
        assert ok.status_code == 200


def cli(state: Path, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "appliance", "token", *args, "--state-dir", str(state)],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_a_network_bind_without_a_token_refuses_to_start(tmp_path: Path) -> None:
    args = [
        sys.executable,
        "-m",
        "appliance",
        "serve",
        "--host",
        "0.0.0.0",
        "--port",
        str(free_port()),
        "--state-dir",
        str(tmp_path / "state"),
        "--no-fetch",
    ]
    done = subprocess.run(
        args,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        env={"XDG_CONFIG_HOME": str(tmp_path / "xdg"), "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 1
    assert (
        "refusing to listen on 0.0.0.0" in done.stderr and "appliance token create" in done.stderr
    )
    assert "Traceback" not in done.stderr


def test_tokens_from_the_cli_guard_a_running_daemon_at_once(
    tiny_model_path: Path, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    created = cli(state, "create", "laptop")
    plain = re.search(r"apl_\S+", created)
    assert plain is not None and "shown only this once" in created
    token = plain.group(0)
    listed = cli(state, "list")
    assert "laptop" in listed and token not in listed and token[:10] in listed

    with running_daemon(
        tmp_path, models={"tiny": {"source": str(tiny_model_path), "context_size": 256}}
    ) as d:
        anonymous = openai.OpenAI(base_url=d.url + "/v1", api_key="not-a-token", max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            anonymous.models.list()
        client = openai.OpenAI(base_url=d.url + "/v1", api_key=token, max_retries=0)
        r = client.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=2
        )
        assert r.choices[0].message.content is not None
        assert httpx.get(d.url + "/api/health").status_code == 200

        second = re.search(r"apl_\S+", cli(state, "create", "grafana"))
        assert second is not None
        assert (
            httpx.get(
                d.url + "/metrics", headers={"Authorization": f"Bearer {second.group(0)}"}
            ).status_code
            == 200
        )

        assert "revoked 'laptop'" in cli(state, "revoke", "laptop")
        with pytest.raises(openai.AuthenticationError):
            client.models.list()
        valid = cli(state, "list", "--valid")
        assert "laptop" not in valid and "grafana" in valid
        d.stop()
        log = d.log()
    assert token not in log and second.group(0) not in log, "tokens never reach the log"
    assert "status=401" in log


def test_an_open_loopback_box_ignores_whatever_key_a_client_sends(
    tiny_model_path: Path, tmp_path: Path
) -> None:
    with running_daemon(tmp_path) as d:
        client = openai.OpenAI(base_url=d.url + "/v1", api_key="sk-whatever", max_retries=0)
        assert client.models.list().data


def test_tokens_in_the_daemons_environment_never_reach_sandboxed_code(tmp_path: Path) -> None:
    secret = "apl_" + "s3cr3t" * 6
    with running_daemon(tmp_path, env={"APPLIANCE_TOKEN": secret}) as d, d.http() as c:
        available = c.get("/api/status").json().get("sandboxes", {}).get("available")
        require(available, "sandboxes are not available on this host (see appliance doctor)")
        r = c.post(
            "/api/run",
            json={"language": "python", "code": "import os; print(sorted(os.environ.items()))"},
        )
        assert r.status_code == 200 and r.json()["status"] == "ok"
        assert secret not in r.text and "APPLIANCE_TOKEN" not in r.text
