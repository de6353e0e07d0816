"""convert_bert without llama.cpp: what it writes into the GGUF, and how it refuses bad folders.

The files are read back with the `gguf` package's reader; that llama.cpp runs them and embeds like
the original is tests/integration/test_convert_bert.py.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import gguf
import pytest

from appliance.errors import ConfigError, InvalidRequest
from appliance.models.fetch.convert_bert import convert_bert
from tests.fixtures.tinybert import LAYERS, tiny_bert_vocab, write_tiny_bert


def read(path: Path) -> tuple[dict[str, Any], dict[str, gguf.ReaderTensor]]:
    reader = gguf.GGUFReader(path)
    fields = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}
    return fields, {t.name: t for t in reader.tensors}


@pytest.fixture
def bert_dir(tmp_path: Path) -> Path:
    return write_tiny_bert(tmp_path / "bert")


def edit_json(path: Path, **changes: Any) -> None:
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def test_writes_bert_hparams_pooling_and_llama_cpp_wordpiece_vocab(
    bert_dir: Path, tmp_path: Path
) -> None:
    fields, tensors = read(convert_bert(bert_dir, tmp_path / "m.gguf"))
    assert fields["general.architecture"] == "bert"
    assert fields["bert.block_count"] == LAYERS
    assert fields["bert.attention.causal"] is False
    assert fields["bert.pooling_type"] == gguf.PoolingType.MEAN
    assert fields["tokenizer.ggml.model"] == "bert"
    vocab = tiny_bert_vocab()
    tokens = fields["tokenizer.ggml.tokens"]
    assert len(tokens) == len(vocab)
    assert tokens[vocab.index("[CLS]")] == "[CLS]"  # control tokens keep their text
    assert tokens[vocab.index("cat")] == "\u2581cat"  # word starts gain the phantom space
    assert tokens[vocab.index("##ing")] == "ing"  # continuations lose their ##
    assert fields["tokenizer.ggml.bos_token_id"] == vocab.index("[CLS]")
    assert fields["tokenizer.ggml.seperator_token_id"] == vocab.index("[SEP]")
    types = fields["tokenizer.ggml.token_type"]
    assert types[vocab.index("[SEP]")] == gguf.TokenType.CONTROL
    assert types[vocab.index("cat")] == gguf.TokenType.NORMAL
    # f16 for matrices, f32 for vectors and the tiny token-type table; no pooler head.
    assert tensors["blk.0.attn_q.weight"].tensor_type == gguf.GGMLQuantizationType.F16
    assert tensors["blk.0.attn_q.bias"].tensor_type == gguf.GGMLQuantizationType.F32
    assert tensors["token_types.weight"].tensor_type == gguf.GGMLQuantizationType.F32
    assert not any("pooler" in name for name in tensors)
    assert len(tensors) == 5 + 16 * LAYERS


def test_cls_pooling_and_q8_0(bert_dir: Path, tmp_path: Path) -> None:
    src = write_tiny_bert(tmp_path / "cls", pooling="cls")
    fields, tensors = read(convert_bert(src, tmp_path / "m.gguf", dtype="q8_0"))
    assert fields["bert.pooling_type"] == gguf.PoolingType.CLS
    assert tensors["blk.1.ffn_up.weight"].tensor_type == gguf.GGMLQuantizationType.Q8_0


def test_reports_progress_to_the_end(bert_dir: Path, tmp_path: Path) -> None:
    seen: list[tuple[str, float]] = []
    convert_bert(bert_dir, tmp_path / "m.gguf", progress=lambda s, f: seen.append((s, f)))
    assert seen[0] == ("read", 0.0)
    assert seen[-1] == ("convert", 1.0)
    fractions = [f for s, f in seen if s == "convert"]
    assert fractions == sorted(fractions)


def test_repeated_vocab_entries_become_unused_placeholders(bert_dir: Path, tmp_path: Path) -> None:
    vocab = tiny_bert_vocab()
    vocab[-1] = vocab[-2]  # a repeat llama.cpp would abort on
    (bert_dir / "vocab.txt").write_text("\n".join(vocab) + "\n")
    fields, _ = read(convert_bert(bert_dir, tmp_path / "m.gguf"))
    assert fields["tokenizer.ggml.tokens"][-1] == f"[DUP{len(vocab) - 1}]"
    assert fields["tokenizer.ggml.token_type"][-1] == gguf.TokenType.UNUSED
    assert len(set(fields["tokenizer.ggml.tokens"])) == len(vocab)


def test_not_a_directory_or_not_a_model(tmp_path: Path) -> None:
    with pytest.raises(InvalidRequest, match="is not a directory"):
        convert_bert(tmp_path / "missing", tmp_path / "m.gguf")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InvalidRequest, match=r"no config\.json"):
        convert_bert(tmp_path / "empty", tmp_path / "m.gguf")


@pytest.mark.parametrize(
    ("file", "changes", "key", "message"),
    [
        ("config.json", {"model_type": "roberta"}, "model_type", "BERT models only"),
        ("config.json", {"hidden_act": "relu"}, "hidden_act", "GELU"),
        ("config.json", {"hidden_size": "big"}, "hidden_size", "positive integer"),
        (
            "config.json",
            {"position_embedding_type": "relative_key"},
            "position_embedding_type",
            "absolute",
        ),
        ("config.json", {"vocab_size": 10}, "vocab_size", "do not belong"),
        ("tokenizer_config.json", {"cls_token": "<s>"}, "cls_token", "not in the vocabulary"),
    ],
)
def test_bad_config_names_file_and_key(
    bert_dir: Path, tmp_path: Path, file: str, changes: dict[str, Any], key: str, message: str
) -> None:
    edit_json(bert_dir / file, **changes)
    with pytest.raises(ConfigError, match=message) as info:
        convert_bert(bert_dir, tmp_path / "m.gguf")
    assert info.value.key == key
    assert info.value.file is not None and info.value.file.endswith(file)
    assert not (tmp_path / "m.gguf").exists()


def test_unsupported_pooling_is_named(tmp_path: Path) -> None:
    src = write_tiny_bert(tmp_path / "bert", pooling="max")
    with pytest.raises(ConfigError, match="pooling_mode_max_tokens is not supported") as info:
        convert_bert(src, tmp_path / "m.gguf")
    assert info.value.file == str(src / "1_Pooling" / "config.json")


def test_weights_must_be_safetensors(bert_dir: Path, tmp_path: Path) -> None:
    (bert_dir / "model.safetensors").rename(bert_dir / "pytorch_model.bin")
    with pytest.raises(InvalidRequest, match=r"PyTorch \.bin weights only"):
        convert_bert(bert_dir, tmp_path / "m.gguf")


def test_missing_tensor_fails_and_leaves_nothing(bert_dir: Path, tmp_path: Path) -> None:
    from safetensors.numpy import load_file, save_file

    weights = load_file(str(bert_dir / "model.safetensors"))
    del weights["encoder.layer.1.output.dense.bias"]
    save_file(weights, str(bert_dir / "model.safetensors"))
    out = tmp_path / "out"
    with pytest.raises(ConfigError, match="missing 1 BERT tensors"):
        convert_bert(bert_dir, out / "m.gguf")
    assert list(out.iterdir()) == []


def test_unknown_dtype(bert_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(InvalidRequest, match="unknown dtype 'q4_k'"):
        convert_bert(bert_dir, tmp_path / "m.gguf", dtype="q4_k")
