"""Which files the API may register as models: model directories only, resolved, never a
workspace or a shared temporary directory; existing ids only with replace."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from appliance.config import Config, ModelsConfig
from appliance.errors import ApplianceError, InvalidRequest
from appliance.models.catalog import ModelCatalog
from appliance.models.registration import RegistrationPolicy


def setup(tmp_path: Path, **models: object) -> tuple[Config, RegistrationPolicy]:
    cfg = Config(
        state_dir=str(tmp_path / "state"),
        config_dir=str(tmp_path / "etc"),
        models=msgspec.convert({"defaults": [], **models}, ModelsConfig),
    )
    for sub in ("models", "sandboxes/sbx_1"):
        (tmp_path / "state" / sub).mkdir(parents=True)
    return cfg, RegistrationPolicy.for_config(cfg)


def gguf(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"GGUF")
    return path


def test_model_directories_are_the_only_sources(tmp_path: Path) -> None:
    scan = tmp_path / "scan"
    _cfg, policy = setup(tmp_path, scan_dirs=[str(scan)])
    assert policy.check_path(gguf(tmp_path / "state" / "models" / "a.gguf")).name == "a.gguf"
    assert policy.check_path(gguf(scan / "sub" / "b.gguf")).name == "b.gguf"
    assert policy.check_path(gguf(tmp_path / "etc" / "models" / "c.gguf")).name == "c.gguf"
    with pytest.raises(
        InvalidRequest, match=r"outside the model directories|temporary directory"
    ) as info:
        policy.check_path(gguf(tmp_path / "elsewhere" / "d.gguf"))
    assert info.value.param == "path" and "scan_dirs" in info.value.message


def test_workspaces_temp_dirs_and_symlinks_into_them_are_refused(tmp_path: Path) -> None:
    _cfg, policy = setup(tmp_path)
    evil = gguf(tmp_path / "state" / "sandboxes" / "sbx_1" / "evil.gguf")
    with pytest.raises(InvalidRequest, match="sandbox workspace"):
        policy.check_path(evil)
    link = tmp_path / "state" / "models" / "looks-fine.gguf"
    link.symlink_to(evil)
    with pytest.raises(InvalidRequest, match="sandbox workspace"):
        policy.check_path(link)  # resolved before it is checked
    shm = Path("/dev/shm")
    if shm.is_dir():
        target = gguf(shm / f"appliance-test-{tmp_path.name}.gguf")
        try:
            with pytest.raises(InvalidRequest, match="temporary directory"):
                policy.check_path(target)
        finally:
            target.unlink()


def test_a_model_directory_at_or_above_a_temp_dir_does_not_count(tmp_path: Path) -> None:
    _cfg, policy = setup(tmp_path, scan_dirs=["/tmp", "/"])
    assert Path("/tmp").resolve() not in policy.model_dirs and Path("/") not in policy.model_dirs
    with pytest.raises(InvalidRequest, match=r"temporary directory|outside"):
        policy.check_path(gguf(tmp_path / "loose.gguf"))  # tmp_path is under /tmp in pytest


def test_existing_ids_need_replace_and_a_refusal_writes_nothing(tmp_path: Path) -> None:
    cfg, policy = setup(tmp_path)
    catalog = ModelCatalog.load(cfg)
    first = gguf(tmp_path / "state" / "models" / "one.gguf")
    second = gguf(tmp_path / "state" / "models" / "two.gguf")
    catalog.add_path(first, model_id="m", policy=policy)
    written = sorted((tmp_path / "etc" / "models").iterdir())
    with pytest.raises(ApplianceError) as info:
        catalog.add_path(second, model_id="m", policy=policy)
    assert info.value.status == 409 and "replace" in info.value.message
    assert catalog.get("m").source == str(first)
    with pytest.raises(InvalidRequest):
        catalog.add_path(
            gguf(tmp_path / "state" / "sandboxes" / "sbx_1" / "x.gguf"), model_id="n", policy=policy
        )
    assert sorted((tmp_path / "etc" / "models").iterdir()) == written
    assert (tmp_path / "etc" / "models" / "m.toml").read_bytes().count(b"one.gguf") == 1
    catalog.add_path(second, model_id="m", policy=policy, replace=True)
    assert ModelCatalog.load(cfg).get("m").source == str(second)
