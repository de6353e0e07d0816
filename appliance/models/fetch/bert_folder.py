"""Reading and validating a BERT-family sentence-transformers folder, for convert_bert.

A folder a user brings can be anything, so everything the converter relies on is checked here
first, with errors that name the file and the key: config.json must describe a plain BERT encoder
(model_type "bert", GELU, absolute positions), the tokenizer must be WordPiece (vocab.txt or
tokenizer.json) with [CLS] and [SEP], the pooling must be one llama.cpp has (mean, CLS, last), and
the weights must be safetensors. The vocabulary comes back already in llama.cpp's spelling: a
word-initial piece gains a leading U+2581, a continuation piece loses its `##`, control tokens stay
as they are.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gguf

from appliance.errors import ConfigError, InvalidRequest

_GELU = {"gelu", "gelu_new", "gelu_pytorch_tanh", "gelu_fast"}
_SPECIAL_DEFAULTS = {
    "cls": "[CLS]",
    "sep": "[SEP]",
    "unk": "[UNK]",
    "pad": "[PAD]",
    "mask": "[MASK]",
}


@dataclass
class BertVocab:
    """The WordPiece vocabulary in llama.cpp's spelling, with token types and special ids."""

    tokens: list[str]
    types: list[int]
    special: dict[str, int] = field(default_factory=dict)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read the file: {exc.strerror}", file=str(path)) from exc
    except json.JSONDecodeError as exc:
        raise ConfigError(f"not valid JSON ({exc}); restore the file", file=str(path)) from exc


def read_config(src_dir: Path) -> dict[str, Any]:
    path = src_dir / "config.json"
    if not path.is_file():
        raise InvalidRequest(
            f"{src_dir} has no config.json, so it is not a Hugging Face model folder; pass the"
            " folder of a BERT sentence-transformers model (config.json, model.safetensors,"
            " vocab.txt)"
        )
    hp = _read_json(path)
    if not isinstance(hp, dict):
        raise ConfigError("expected a JSON object", file=str(path))
    model_type = hp.get("model_type")
    if model_type != "bert":
        raise ConfigError(
            f"model_type is {model_type!r}, but this converter handles BERT models only"
            " (model_type 'bert'); use a BERT-family model such as all-MiniLM-L6-v2, or bring a"
            " GGUF file instead",
            file=str(path),
            key="model_type",
        )
    for key in (
        "hidden_size",
        "num_hidden_layers",
        "num_attention_heads",
        "intermediate_size",
        "max_position_embeddings",
        "vocab_size",
    ):
        value = hp.get(key)
        if not isinstance(value, int) or value <= 0:
            raise ConfigError(
                f"must be a positive integer, found {value!r}", file=str(path), key=key
            )
    if hp["hidden_size"] % hp["num_attention_heads"]:
        raise ConfigError(
            "hidden_size is not a multiple of num_attention_heads",
            file=str(path),
            key="hidden_size",
        )
    act = hp.get("hidden_act", "gelu")
    if act not in _GELU:
        raise ConfigError(
            f"activation {act!r} is not supported; llama.cpp's BERT uses GELU",
            file=str(path),
            key="hidden_act",
        )
    if hp.get("position_embedding_type", "absolute") != "absolute":
        raise ConfigError(
            "only absolute position embeddings are supported by llama.cpp's BERT",
            file=str(path),
            key="position_embedding_type",
        )
    return hp


def read_pooling(src_dir: Path) -> gguf.PoolingType:
    """The pooling of the sentence-transformers Pooling module; mean when there is none."""
    modules_path = src_dir / "modules.json"
    pooling_dir = src_dir / "1_Pooling"
    if modules_path.is_file():
        modules = _read_json(modules_path)
        found = [
            m for m in modules if isinstance(m, dict) and str(m.get("type", "")).endswith("Pooling")
        ]
        if found:
            pooling_dir = src_dir / str(found[0].get("path", ""))
    config_path = pooling_dir / "config.json"
    if not config_path.is_file():
        return gguf.PoolingType.MEAN
    cfg = _read_json(config_path)
    if cfg.get("pooling_mode_mean_tokens"):
        return gguf.PoolingType.MEAN
    if cfg.get("pooling_mode_cls_token"):
        return gguf.PoolingType.CLS
    if cfg.get("pooling_mode_lasttoken"):
        return gguf.PoolingType.LAST
    modes = sorted(k for k, v in cfg.items() if k.startswith("pooling_mode") and v)
    raise ConfigError(
        f"pooling {', '.join(modes) or 'none'} is not supported by llama.cpp; set"
        " pooling_mode_mean_tokens or pooling_mode_cls_token to true",
        file=str(config_path),
    )


def _special_names(src_dir: Path) -> dict[str, str]:
    names = dict(_SPECIAL_DEFAULTS)
    for fname in ("special_tokens_map.json", "tokenizer_config.json"):
        path = src_dir / fname
        if not path.is_file():
            continue
        data = _read_json(path)
        for kind in names:
            value = data.get(f"{kind}_token") if isinstance(data, dict) else None
            if isinstance(value, dict):
                value = value.get("content")
            if isinstance(value, str):
                names[kind] = value
    return names


def _base_vocab(src_dir: Path) -> tuple[list[str], set[str]]:
    """Tokens in id order, and the set of tokens the tokenizer marks special."""
    special: set[str] = set()
    tok_json = src_dir / "tokenizer.json"
    doc = _read_json(tok_json) if tok_json.is_file() else None
    if isinstance(doc, dict):
        special = {t["content"] for t in doc.get("added_tokens", []) if t.get("special")}
    vocab_txt = src_dir / "vocab.txt"
    if vocab_txt.is_file():
        text = vocab_txt.read_text(encoding="utf-8")
        return text.rstrip("\n").split("\n"), special
    if isinstance(doc, dict):
        model = doc.get("model") or {}
        if model.get("type") != "WordPiece":
            raise ConfigError(
                f"tokenizer model is {model.get('type')!r}; llama.cpp's BERT needs a WordPiece"
                " vocabulary",
                file=str(tok_json),
                key="model.type",
            )
        by_id = {int(i): tok for tok, i in model["vocab"].items()}
        return [by_id.get(i, f"[PAD{i}]") for i in range(max(by_id) + 1)], special
    raise InvalidRequest(
        f"{src_dir} has neither vocab.txt nor tokenizer.json; copy the tokenizer files of the"
        " model into the folder"
    )


def read_vocab(src_dir: Path, n_vocab: int) -> BertVocab:
    raw, special = _base_vocab(src_dir)
    if len(raw) > n_vocab:
        raise ConfigError(
            f"the tokenizer has {len(raw)} tokens but vocab_size is {n_vocab}; the tokenizer"
            " files do not belong to these weights",
            file=str(src_dir / "config.json"),
            key="vocab_size",
        )
    ids: dict[str, int] = {}
    for i, tok in enumerate(raw):
        ids.setdefault(tok, i)
    names = _special_names(src_dir)
    special_ids: dict[str, int] = {}
    for kind, name in names.items():
        if name in ids:
            special_ids[kind] = ids[name]
            special.add(name)
        elif kind in ("cls", "sep"):
            raise ConfigError(
                f"the {kind} token {name!r} is not in the vocabulary; BERT needs it to frame a"
                " text",
                file=str(src_dir / "tokenizer_config.json"),
                key=f"{kind}_token",
            )
    tokens: list[str] = []
    types: list[int] = []
    seen: set[str] = set()
    spelled: str
    ttype: gguf.TokenType
    for i in range(n_vocab):
        piece = raw[i] if i < len(raw) else None
        if piece is None:  # an embedding row the tokenizer never produces
            spelled, ttype = f"[PAD{i}]", gguf.TokenType.UNUSED
        elif piece in special:
            spelled, ttype = piece, gguf.TokenType.CONTROL
        elif piece.startswith("##"):
            spelled, ttype = piece[2:], gguf.TokenType.NORMAL
        else:
            spelled, ttype = "\u2581" + piece, gguf.TokenType.NORMAL
        if spelled in seen:
            # llama.cpp aborts on a vocabulary with a repeated token; the first one keeps the
            # text (as in the original tokenizer, which never produces a repeat's id).
            spelled, ttype = f"[DUP{i}]", gguf.TokenType.UNUSED
        seen.add(spelled)
        tokens.append(spelled)
        types.append(ttype)
    return BertVocab(tokens=tokens, types=types, special=special_ids)


def weight_files_of(src_dir: Path) -> list[Path]:
    files = sorted(src_dir.glob("*.safetensors"))
    if files:
        return files
    if any(src_dir.glob("pytorch_model*.bin")):
        raise InvalidRequest(
            f"{src_dir} holds PyTorch .bin weights only; this converter reads safetensors."
            " Use a model published with model.safetensors"
        )
    raise InvalidRequest(f"{src_dir} has no *.safetensors weights; it is not a complete model")
