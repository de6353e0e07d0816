"""The hub's pure parts: pull sources, digests, quant selection, import ids and GGUF headers."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from appliance.errors import InvalidRequest, ModelUnavailable
from appliance.models.fetch.hf_files import pick_files
from appliance.models.fetch.importers import find_models, model_id
from appliance.models.fetch.sources import check_sha256, parse_pull_source
from appliance.models.fetch.wheels import ModelFetchError
from appliance.models.gguf_info import describe_gguf


def test_pull_sources_parse_into_their_parts() -> None:
    u = parse_pull_source("url:https://host/a/m.gguf")
    assert (u.scheme, u.location) == ("url", "https://host/a/m.gguf")
    q = parse_pull_source("hf:bartowski/SmolLM2-GGUF:Q4_K_M")
    assert (q.scheme, q.location, q.file, q.quant) == ("hf", "bartowski/SmolLM2-GGUF", "", "Q4_K_M")
    f = parse_pull_source("hf:org/repo/sub/m.gguf")
    assert (f.location, f.file) == ("org/repo", "sub/m.gguf")


@pytest.mark.parametrize(
    "text",
    [
        "ftp://x/y.gguf",
        "/etc/passwd",
        "hf:org/repo",
        "hf:org/repo/../x.gguf",
        "hf:org/repo/.hidden/x.gguf",
        "hf:org/repo/x.bin",
        "hf:org/repo/x.gguf:Q4",
        "hf:../repo:Q4",
        "url:file:///etc/passwd",
    ],
)
def test_hostile_pull_sources_are_refused_with_the_forms(text: str) -> None:
    with pytest.raises(InvalidRequest) as err:
        parse_pull_source(text)
    assert err.value.param == "source" and "hf:OWNER/REPO:QUANT" in err.value.message


def test_sha256_must_be_64_hex_digits() -> None:
    assert check_sha256("sha256:" + "AB" * 32) == "ab" * 32
    assert check_sha256(None) is None
    for bad in ("xyz", "a" * 63, "g" * 64):
        with pytest.raises(InvalidRequest):
            check_sha256(bad)


def test_a_quant_picks_its_file_and_every_part_of_a_split() -> None:
    listing = {
        "m-Q4_K_M.gguf": (1, "a"),
        "m-Q4_K_S.gguf": (1, "b"),
        "m-Q8_0-00001-of-00002.gguf": (1, "c"),
        "m-Q8_0-00002-of-00002.gguf": (1, "d"),
        "README.md": (1, None),
    }
    assert pick_files(listing, parse_pull_source("hf:o/r:q4_k_m")) == ["m-Q4_K_M.gguf"]
    assert pick_files(listing, parse_pull_source("hf:o/r:Q8_0")) == [
        "m-Q8_0-00001-of-00002.gguf",
        "m-Q8_0-00002-of-00002.gguf",
    ]
    with pytest.raises(InvalidRequest, match="no GGUF for quant"):
        pick_files(listing, parse_pull_source("hf:o/r:Q2_K"))
    with pytest.raises(ModelFetchError, match="no file"):
        pick_files(listing, parse_pull_source("hf:o/r/other.gguf"))


def test_import_ids_say_the_origin_and_fit_the_pattern() -> None:
    assert model_id("ollama", "llama3.2", "3b-Instruct") == "ollama-llama3.2-3b-instruct"
    assert model_id("ollama", "hf.co/x y", "latest") == "ollama-hf.co-x-y-latest"
    assert len(model_id("lmstudio", "x" * 200)) == 64


def test_lmstudio_and_hf_cache_layouts(tmp_path: Path) -> None:
    gguf = b"GGUF" + b"\0" * 16
    lm = tmp_path / "lm" / "pub" / "repo"
    lm.mkdir(parents=True)
    (lm / "Model-Q4.gguf").write_bytes(gguf)
    (lm / "mmproj-model.gguf").write_bytes(gguf)
    assert [m.id for m in find_models("lmstudio", tmp_path / "lm")] == ["lmstudio-model-q4"]
    snap = tmp_path / "hub" / "models--org--repo" / "snapshots" / "abc"
    snap.mkdir(parents=True)
    (snap / "m-00001-of-00002.gguf").write_bytes(gguf)
    (snap / "m-00002-of-00002.gguf").write_bytes(gguf)
    found = find_models("hf-cache", tmp_path / "hub")
    assert [(m.id, m.name) for m in found] == [
        ("hf-m-00001-of-00002", "org/repo/m-00001-of-00002.gguf")
    ]
    with pytest.raises(InvalidRequest):
        find_models("ollama", tmp_path / "missing")


def _gguf(path: Path, kv: dict[str, object]) -> Path:
    def s(x: str) -> bytes:
        b = x.encode()
        return struct.pack("<Q", len(b)) + b

    out = b"GGUF" + struct.pack("<IQQ", 3, 0, len(kv))
    for k, v in kv.items():
        out += s(k)
        if isinstance(v, str):
            out += struct.pack("<I", 8) + s(v)
        elif isinstance(v, list):
            out += struct.pack("<IIQ", 9, 8, len(v)) + b"".join(s(x) for x in v)
        else:
            out += struct.pack("<II", 4, int(v))  # type: ignore[call-overload]
    path.write_bytes(out)
    return path


def test_gguf_header_gives_kind_and_context(tmp_path: Path) -> None:
    chat = _gguf(
        tmp_path / "c.gguf",
        {
            "general.architecture": "qwen2",
            "tokenizer.ggml.tokens": ["a", "b"],
            "qwen2.context_length": 32768,
            "tokenizer.chat_template": "{{x}}",
        },
    )
    d = describe_gguf(chat)
    assert (d.kind, d.context_length, d.architecture) == ("chat", 32768, "qwen2")
    emb = _gguf(tmp_path / "e.gguf", {"general.architecture": "bert", "bert.context_length": 512})
    assert describe_gguf(emb).kind == "embedding"
    (tmp_path / "bad.gguf").write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + b"\xff" * 8)
    with pytest.raises(ModelUnavailable):
        describe_gguf(tmp_path / "bad.gguf")
