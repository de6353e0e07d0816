"""Schemathesis against a live daemon: no generated request gets a 5xx or an off-schema answer.

The daemon serves its OpenAPI document at /openapi.json; schemathesis (its CLI, run in a
subprocess so its output is the failure message) reads it, generates requests for every
operation (the examples, coverage, fuzzing and stateful phases, a bounded number per operation,
about a minute on two cores) and checks
each answer: not a server error, status code, content type and body as documented (SSE events
included). The models are the tiny test GGUF under the shipped ids, so no request can start a
download, and a profile max_tokens keeps every generation short. A session, an agent, a stored
response and a sandbox exist before the run, and the ids and model names are offered to the
generator, so requests reach the handlers' logic rather than only their 404s.

Left out: `GET /api/events`, a stream that never ends by design (schemathesis would wait for its
request timeout on every example). Sandboxes are in: the pool is empty and the generated code
is junk that fails fast, so they cost little.

`APPLIANCE_FUZZ_EXAMPLES` (default 25 per operation), `APPLIANCE_FUZZ_SEED` (default fixed, so
a run is reproducible; any integer explores elsewhere) and `APPLIANCE_FUZZ_PHASES` tune a run.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import require
from tests.integration.daemon import Daemon, running_daemon

require(
    importlib.util.find_spec("schemathesis") is not None,
    "schemathesis is not installed (pip install -e '.[test]')",
)

EXAMPLES = int(os.environ.get("APPLIANCE_FUZZ_EXAMPLES", "25"))
SEED = os.environ.get("APPLIANCE_FUZZ_SEED", "20260901")
PHASES = os.environ.get("APPLIANCE_FUZZ_PHASES", "examples,coverage,fuzzing,stateful")
CHAT, EMBED = "smollm2-135m-instruct", "all-minilm-l6-v2"


def _schemathesis() -> list[str]:
    exe = Path(sys.executable).with_name("schemathesis")
    return [str(exe)] if exe.exists() else [shutil.which("schemathesis") or "schemathesis"]


@pytest.fixture(scope="module")
def daemon(tiny_model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    root = tmp_path_factory.mktemp("fuzz")
    models = {
        CHAT: {
            "source": str(tiny_model_path),
            "context_size": 512,
            "max_tokens": 16,
            "parallel": 2,
        },
        EMBED: {"source": str(tiny_model_path), "kind": "embedding", "context_size": 128},
    }
    with running_daemon(root, models=models, config={"models": {"spare_worker": False}}) as d:
        yield d


def _seed_data(d: Daemon) -> dict[str, str]:
    """Objects for the generated requests to find: their ids."""
    with d.http() as c:
        session = c.post("/api/sessions", json={"model": CHAT}).json()["id"]
        agent = c.post("/api/agents", json={"name": "fuzz-agent", "model": CHAT}).json()["id"]
        response = c.post(
            "/v1/responses", json={"model": CHAT, "input": "hi", "max_output_tokens": 2}
        ).json()["id"]
        made = c.post("/api/sandboxes", json={"language": "python"})
        sandbox = made.json()["id"] if made.status_code == 201 else "sbx_none"
    return {"session": session, "agent": agent, "response": response, "sandbox": sandbox}


def _config(ids: dict[str, str]) -> str:
    def values(*v: object) -> str:
        return "[" + ", ".join(f'"{x}"' if isinstance(x, str) else str(x) for x in v) + "]"

    return f"""
[dictionaries.models]
values = {values(CHAT, EMBED)}
[dictionaries.limits]
values = {values(1, 4, 16)}
[dictionaries.inputs]
values = {values("hi", "Say something.")}
[dictionaries.sessions]
values = {values(ids["session"])}
[dictionaries.agents]
values = {values(ids["agent"], "fuzz-agent")}
[dictionaries.responses]
values = {values(ids["response"])}
[dictionaries.sandboxes]
values = {values(ids["sandbox"])}

[parameters]
"body.model" = {{ dictionary = "models", probability = 0.8 }}
"body.max_tokens" = {{ dictionary = "limits", probability = 0.7 }}
"body.max_completion_tokens" = {{ dictionary = "limits", probability = 0.7 }}
"body.max_output_tokens" = {{ dictionary = "limits", probability = 0.7 }}
"body.input" = {{ dictionary = "inputs", probability = 0.5 }}
"path.model_id" = {{ dictionary = "models", probability = 0.5 }}
"path.session_id" = {{ dictionary = "sessions", probability = 0.6 }}
"path.ref" = {{ dictionary = "agents", probability = 0.6 }}
"path.response_id" = {{ dictionary = "responses", probability = 0.6 }}
"path.sandbox_id" = {{ dictionary = "sandboxes", probability = 0.6 }}
"""


def test_no_generated_request_gets_a_5xx_or_an_off_schema_answer(
    daemon: Daemon, tmp_path: Path
) -> None:
    config = tmp_path / "schemathesis.toml"
    config.write_text(_config(_seed_data(daemon)))
    cmd = [
        *_schemathesis(),
        "--no-color",
        "--config-file",
        str(config),
        "run",
        daemon.url + "/openapi.json",
        "--phases",
        PHASES,
        "--max-examples",
        str(EXAMPLES),
        "--seed",
        SEED,
        "--checks",
        "not_a_server_error,status_code_conformance,content_type_conformance,"
        "response_schema_conformance",
        "--exclude-path",
        "/api/events",
        # Ollama's hub calls answer 501 by design (no model hub yet), which schemathesis counts
        # as a server error; tests/integration/test_ollama_api.py checks their message
        "--exclude-path-regex",
        "^/api/(pull|push|create|copy|delete)$",
        # a generated image reference names some registry on the internet: a pull would go out
        # (tests/integration/test_images_registry.py pulls from a loopback registry instead)
        "--exclude-path",
        "/api/images/pull",
        "--request-timeout",
        "60",
        "--workers",
        "2",
    ]
    t0 = time.monotonic()
    done = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    took = time.monotonic() - t0
    out = done.stdout + done.stderr
    summary = out[out.rfind("SUMMARY") :] if "SUMMARY" in out else out[-3000:]
    print(f"schemathesis took {took:.0f}s\n{summary}")
    assert done.returncode == 0, out[-20000:]
    assert "Tested: " in out and "generated" in out, out[-3000:]
