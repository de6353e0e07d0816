"""Model profiles and the catalog: validation errors name the file and key; scan dirs; add."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.config import Config, ConfigError, load_config
from appliance.errors import InvalidRequest, ModelNotFound
from appliance.models.catalog import ModelCatalog


def config(tmp_path: Path, body: str = "") -> Config:
    cfg = tmp_path / "config.toml"
    cfg.write_text(body)
    return load_config(cfg, state_dir=str(tmp_path / "state"))


def test_shipped_profiles_are_valid(tmp_path: Path) -> None:
    catalog = ModelCatalog.load(config(tmp_path))
    assert {"smollm2-135m-instruct", "all-minilm-l6-v2"} <= set(catalog.ids())
    assert catalog.get("all-minilm-l6-v2").kind == "embedding"


@pytest.mark.parametrize(
    ("profile", "key"),
    [
        ('source = "/x.gguf"\ncontxt_size = 10\n', "contxt_size"),
        ('source = "/x.gguf"\ncontext_size = "big"\n', "context_size"),
        ('source = "/x.gguf"\nkind = "vision"\n', "kind"),
    ],
)
def test_bad_profile_names_file_and_key(tmp_path: Path, profile: str, key: str) -> None:
    pdir = tmp_path / "profiles"
    pdir.mkdir()
    (pdir / "broken.toml").write_text(profile)
    with pytest.raises(ConfigError) as info:
        ModelCatalog.load(config(tmp_path, f'[models]\nprofile_dirs = ["{pdir}"]\n'))
    assert str(pdir / "broken.toml") in info.value.message
    assert key in info.value.message


def test_bad_value_is_explained(tmp_path: Path) -> None:
    pdir = tmp_path / "profiles"
    pdir.mkdir()
    (pdir / "x.toml").write_text('source = "/x.gguf"\nparallel = 0\n')
    with pytest.raises(ConfigError, match="parallel must be between 1 and 64"):
        ModelCatalog.load(config(tmp_path, f'[models]\nprofile_dirs = ["{pdir}"]\n'))


def test_unknown_config_key_names_section(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        config(tmp_path, "[models]\nqueue_sise = 3\n")
    assert "models.queue_sise" in info.value.message


def test_scan_dirs_add_gguf_files(tmp_path: Path) -> None:
    models = tmp_path / "models" / "sub"
    models.mkdir(parents=True)
    (models / "My Model.Q4_K_M.gguf").write_bytes(b"GGUF")
    catalog = ModelCatalog.load(
        config(tmp_path, f'[models]\nscan_dirs = ["{tmp_path / "models"}"]\n')
    )
    prof = catalog.get("my-model.q4_k_m")
    assert prof.source == str(models / "My Model.Q4_K_M.gguf")
    assert catalog.local_path(prof.id) == models / "My Model.Q4_K_M.gguf"


def test_add_path_persists_a_profile(tmp_path: Path) -> None:
    gguf = tmp_path / "tiny.gguf"
    gguf.write_bytes(b"GGUF")
    cfg = config(tmp_path)
    prof = ModelCatalog.load(cfg).add_path(gguf, model_id="tiny")
    assert prof.id == "tiny"
    again = ModelCatalog.load(cfg)  # a restart sees it
    assert again.get("tiny").source == str(gguf)
    with pytest.raises(InvalidRequest, match=r"not a \.gguf file"):
        again.add_path(tmp_path / "missing.gguf")
    with pytest.raises(ModelNotFound, match="appliance models add"):
        again.get("nope")
