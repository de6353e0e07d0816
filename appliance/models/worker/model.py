"""One model in a worker through llama-cpp-python's low-level bindings: the weights once
(`llama_model`), one `llama_context` with a sequence per parallel slot, and the vocabulary.

Nothing here uses the high-level `llama_cpp.Llama` class: its private attributes are not an API,
and it holds one context per object, where the batched engine needs one context for all.
"""

from __future__ import annotations

import ctypes
import os
import sys
from dataclasses import dataclass
from typing import Any

import llama_cpp

from appliance.models.worker import protocol as p

_VALUE_CAP = 4096
"""Metadata values longer than this are left out of Loaded.metadata (but the chat template)."""


_WARN, _ERROR, _CONT = 3, 4, 5  # ggml_log_level
_kept = [False]


@llama_cpp.llama_log_callback  # type: ignore[untyped-decorator]
def _log(level: int, text: bytes, _user: ctypes.c_void_p) -> None:
    """llama.cpp's warnings and errors to stderr (the daemon's log); its chatter nowhere."""
    keep = _kept[0] if level == _CONT else level in (_WARN, _ERROR)
    _kept[0] = keep
    if keep:
        sys.stderr.write(text.decode("utf-8", "replace"))


llama_cpp.llama_log_set(_log, ctypes.c_void_p(0))


class LoadError(Exception):
    """llama.cpp could not load the file or create its context."""


@dataclass(frozen=True)
class Layout:
    """How the context is laid out for `parallel` sequences."""

    n_seq: int
    n_ctx_seq: int
    """Tokens one sequence may hold: the profile's context_size."""
    n_ctx_total: int
    n_batch: int
    unified: bool


def layout_for(spec: p.Load) -> Layout:
    n_batch = max(1, min(spec.n_batch, spec.n_ctx))
    if spec.kind == "embedding":
        # inputs are sequences of one batch, evaluated and forgotten: one context's worth of
        # tokens, up to one sequence per token of a batch
        n_seq = max(1, min(n_batch, int(llama_cpp.llama_max_parallel_sequences())))
        return Layout(
            n_seq=n_seq, n_ctx_seq=spec.n_ctx, n_ctx_total=spec.n_ctx, n_batch=n_batch, unified=True
        )
    n_seq = max(1, spec.parallel)
    return Layout(
        n_seq=n_seq,
        n_ctx_seq=spec.n_ctx,
        n_ctx_total=spec.n_ctx * n_seq,
        n_batch=n_batch,
        unified=spec.kv_unified,
    )


class Model:
    """A loaded GGUF and its one context. Not thread-safe for decoding: the engine thread alone
    decodes, reads logits and touches the KV memory; tokenizing and detokenizing read the
    vocabulary only and may run on any thread."""

    def __init__(self, spec: p.Load) -> None:
        self.spec = spec
        self.layout = layout_for(spec)
        self.embedding = spec.kind == "embedding"
        mparams = llama_cpp.llama_model_default_params()
        mparams.n_gpu_layers = spec.n_gpu_layers
        model = llama_cpp.llama_model_load_from_file(spec.model_path.encode(), mparams)
        if not model:
            raise LoadError(f"llama.cpp could not load {spec.model_path}")
        self.model: Any = model
        self.vocab: Any = llama_cpp.llama_model_get_vocab(model)
        self.n_vocab = int(llama_cpp.llama_vocab_n_tokens(self.vocab))
        self.n_embd = int(llama_cpp.llama_model_n_embd(model))
        threads = spec.n_threads or os.cpu_count() or 1
        cparams = llama_cpp.llama_context_default_params()
        lay = self.layout
        cparams.n_ctx = lay.n_ctx_total
        cparams.n_batch = lay.n_batch
        # an embedding model sees a whole input in one micro-batch (non-causal attention)
        cparams.n_ubatch = lay.n_batch
        cparams.n_seq_max = lay.n_seq
        cparams.n_threads = threads
        cparams.n_threads_batch = threads
        cparams.kv_unified = lay.unified or self.embedding
        cparams.embeddings = self.embedding
        cparams.no_perf = True
        # flash attention computes a chunked prefill (and a restored session) differently in the
        # last bits from a whole one; without it a resumed session answers as a fresh one would
        cparams.flash_attn_type = (
            llama_cpp.LLAMA_FLASH_ATTN_TYPE_AUTO
            if spec.flash_attn
            else llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED
        )
        ctx = llama_cpp.llama_init_from_model(model, cparams)
        if not ctx:
            llama_cpp.llama_model_free(model)
            raise LoadError(
                f"llama.cpp could not create a context of {lay.n_ctx_total} tokens for "
                f"{spec.model_path}; lower context_size or parallel in the model profile"
            )
        self.ctx: Any = ctx
        self.mem: Any = llama_cpp.llama_get_memory(ctx)  # NULL for models without a KV cache
        self.n_ctx_seq = int(llama_cpp.llama_n_ctx_seq(ctx)) if not lay.unified else lay.n_ctx_seq
        self.n_ctx_seq = min(self.n_ctx_seq, lay.n_ctx_seq)
        self.pooling = int(llama_cpp.llama_pooling_type(ctx)) if self.embedding else -1
        self.metadata = read_metadata(model)
        bos = int(llama_cpp.llama_vocab_bos(self.vocab))
        eos = int(llama_cpp.llama_vocab_eos(self.vocab))
        self.bos_text = self.token_text(bos) if bos >= 0 else ""
        self.eos_text = self.token_text(eos) if eos >= 0 else ""
        self._piece_buf = ctypes.create_string_buffer(64)

    # --- vocabulary -----------------------------------------------------------------------

    def tokenize(self, text: str, *, add_bos: bool = True, special: bool = True) -> list[int]:
        data = text.encode("utf-8")
        cap = len(data) + 8
        buf = (llama_cpp.llama_token * cap)()
        n = llama_cpp.llama_tokenize(self.vocab, data, len(data), buf, cap, add_bos, special)
        if n < 0:
            cap = -n
            buf = (llama_cpp.llama_token * cap)()
            n = llama_cpp.llama_tokenize(self.vocab, data, len(data), buf, cap, add_bos, special)
        return list(buf[:n])

    def piece(self, token: int) -> bytes:
        """The bytes of one token as text (special tokens render as nothing). Engine thread only:
        the buffer is reused."""
        buf = self._piece_buf
        n = llama_cpp.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, False)
        if n < 0:  # a longer piece than the buffer: grow it and ask again
            self._piece_buf = buf = ctypes.create_string_buffer(-n)
            n = llama_cpp.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, False)
        return buf.raw[:n]

    def token_text(self, token: int) -> str:
        text = llama_cpp.llama_vocab_get_text(self.vocab, token)
        return text.decode("utf-8", "replace") if text else ""

    def is_eog(self, token: int) -> bool:
        return bool(llama_cpp.llama_vocab_is_eog(self.vocab, token))

    @property
    def chat_template(self) -> str | None:
        return self.metadata.get("tokenizer.chat_template")

    @property
    def n_ctx_train(self) -> int:
        arch = self.metadata.get("general.architecture", "llama")
        try:
            return int(self.metadata.get(f"{arch}.context_length", "0"))
        except ValueError:
            return 0

    # --- KV memory of one sequence --------------------------------------------------------

    def seq_rm(self, seq: int, p0: int = -1, p1: int = -1) -> None:
        if self.mem:
            llama_cpp.llama_memory_seq_rm(self.mem, seq, p0, p1)

    def seq_cp(self, src: int, dst: int, p0: int = -1, p1: int = -1) -> None:
        if self.mem:
            llama_cpp.llama_memory_seq_cp(self.mem, src, dst, p0, p1)

    def seq_pos_max(self, seq: int) -> int:
        """The last position the sequence holds; -1 when it holds nothing."""
        if not self.mem:
            return -1
        return int(llama_cpp.llama_memory_seq_pos_max(self.mem, seq))

    def clear(self) -> None:
        if self.mem:
            llama_cpp.llama_memory_clear(self.mem, True)

    # --- lifetime -------------------------------------------------------------------------

    def free_context(self) -> None:
        """Free the context (KV cache, compute buffers): this process's own memory."""
        if self.ctx:
            llama_cpp.llama_free(self.ctx)
            self.ctx = None
            self.mem = None

    def free(self) -> None:
        """Free the context, then the weights (mostly an unmapping of the file on the CPU)."""
        self.free_context()
        if self.model:
            llama_cpp.llama_model_free(self.model)
            self.model = None


def read_metadata(model: Any) -> dict[str, str]:
    """The GGUF's metadata as text; values over _VALUE_CAP are left out but the chat template."""
    out: dict[str, str] = {}
    size = 1024
    buf = ctypes.create_string_buffer(size)
    for i in range(int(llama_cpp.llama_model_meta_count(model))):
        values: list[str] = []
        for fn in (
            llama_cpp.llama_model_meta_key_by_index,
            llama_cpp.llama_model_meta_val_str_by_index,
        ):
            n = int(fn(model, i, buf, size))
            if n >= size:
                size = n + 1
                buf = ctypes.create_string_buffer(size)
                n = int(fn(model, i, buf, size))
            values.append(buf.value.decode("utf-8", "replace") if n >= 0 else "")
        key, value = values
        if len(value) < _VALUE_CAP or key == "tokenizer.chat_template":
            out[key] = value
    return out
