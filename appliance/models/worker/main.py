"""The model worker process: one loaded model, llama-cpp-python inside, commands on stdin.

Started as `python -m appliance.models.worker` (its `__main__`). It imports llama_cpp first and says Hello, then
waits: that is the pre-warmed spare the scheduler hands the next load to, so waking a model costs
the model load alone. A llama.cpp abort, an OOM kill or SIGKILL ends this process only; the daemon
sees the pipe close and fails the requests this worker was serving.

Each parallel slot is its own llama context. A request bound to a `slot_key` (a session) goes back
to the slot that already holds its tokens, so only the new tokens are evaluated; otherwise the free
slot with the longest shared prefix is chosen. Slots beyond the first are created on first use, so
a wake-up pays for one context only.

Sessions outlive slots. When a request takes a slot from a key (for a key of its own, or without a
key when every free slot is bound), the state the slot held for that key is first written to the
request's `park_evicted_to` directory (the daemon indexes it),
and a request may bring its key's parked state (`restore_from`), which is loaded when the slot was
not already bound to that key and the file's tokens are mostly a prefix of the prompt. A file
that is damaged, hashes differently than the daemon indexed, or covers another prefix is reported
and skipped: the prompt is then evaluated in full, never answered from a wrong state.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import gc
import os
import queue
import re
import sys
import threading
import time
from typing import Any, BinaryIO

from appliance.models.worker import protocol as p
from appliance.models.worker.lifeline import die_with_parent

_t0 = time.perf_counter()
import llama_cpp  # noqa: E402  (the point of a spare worker is to pay for this import early)
import numpy as np  # noqa: E402
import psutil  # noqa: E402
from llama_cpp.llama_grammar import LlamaGrammar  # noqa: E402

from appliance.errors import ApplianceError, InvalidRequest  # noqa: E402
from appliance.models import chat_format as cf  # noqa: E402
from appliance.models.worker.decode import decode, parse_logit_bias, sampling_args  # noqa: E402
from appliance.models.worker.kvfile import (  # noqa: E402
    map_kv_file,
    read_kv_file,
    token_prefix_hash,
    write_kv_file,
)

IMPORT_MS = (time.perf_counter() - _t0) * 1000.0

_FILE_SAFE_KEY = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")
GRAMMAR_CACHE = 64
"""Distinct grammars a worker keeps checked against its vocabulary (least recently used out)."""


class Slot:
    def __init__(self, index: int) -> None:
        self.index = index
        self.llm: llama_cpp.Llama | None = None
        self.key: str | None = None
        self.busy = False
        self.last_used = 0.0
        self.rebound = False
        """Set by acquire_slot: the slot was just given to a key it was not bound to."""
        self.displaced: str | None = None
        """Set by acquire_slot: the key the slot was bound to before this request took it (for a
        key of its own, or for a request without one when no unbound slot was free)."""
        self.clean_len: int | None = None
        """Tokens of the slot's last prompt: evaluated in batches, unlike the tokens generated after."""


class _SlotReport:
    """What preparing a slot did with parked state: `parked` and `restore` of the result."""

    def __init__(self) -> None:
        self.parked: list[p.ParkReport] = []
        self.restore: p.RestoreReport | None = None


class Worker:
    def __init__(self, out: BinaryIO) -> None:
        self.out = out
        self.write_lock = threading.Lock()
        self.cancelled: set[int] = set()
        self.credits: dict[int, int] = {}
        self.credit_cv = threading.Condition()
        self.spec: p.Load | None = None
        self.slots: list[Slot] = []
        self.slots_cv = threading.Condition()
        self.template: str | None = None
        self.bos = ""
        self.eos = ""
        self._grammars: collections.OrderedDict[str, LlamaGrammar] = collections.OrderedDict()
        self._grammar_lock = threading.Lock()
        self.gpu_offload = bool(llama_cpp.llama_supports_gpu_offload())
        self.spare_file_rss = 0
        """File-backed resident bytes before the model was loaded (see unload)."""

    # --- plumbing ---------------------------------------------------------------------------

    def send(self, msg: p.Event) -> None:
        data = p.encode(msg)
        with self.write_lock:
            self.out.write(data)
            self.out.flush()

    # --- load ------------------------------------------------------------------------------

    def _new_llama(self) -> llama_cpp.Llama:
        spec = self.spec
        assert spec is not None
        threads = spec.n_threads or os.cpu_count() or 1
        return llama_cpp.Llama(
            model_path=spec.model_path,
            n_ctx=spec.n_ctx,
            n_batch=min(spec.n_batch, spec.n_ctx),
            n_ubatch=min(spec.n_batch, spec.n_ctx),
            n_threads=threads,
            n_threads_batch=threads,
            n_gpu_layers=spec.n_gpu_layers,
            embedding=spec.kind == "embedding",
            verbose=False,
        )

    def prewarm(self, cmd: p.Prewarm) -> None:
        with contextlib.suppress(Exception):  # best effort; the real load reports any problem
            llama_cpp.Llama(model_path=cmd.model_path, vocab_only=True, verbose=False)

    def load(self, spec: p.Load) -> None:
        rss0 = psutil.Process().memory_info().rss
        self.spare_file_rss = _status_bytes("RssFile").get("RssFile", 0)
        t = time.perf_counter()
        self.spec = spec
        self.slots = [Slot(i) for i in range(spec.parallel)]
        try:
            llm = self._new_llama()
        except Exception as exc:  # llama-cpp-python raises ValueError for unreadable files
            self.send(p.Failed(id=0, message=f"llama.cpp could not load {spec.model_path}: {exc}"))
            return
        self.slots[0].llm = llm
        meta = {
            k: str(v)
            for k, v in llm.metadata.items()
            if len(str(v)) < 4096 or k == "tokenizer.chat_template"
        }
        self.template = spec.chat_template or llm.metadata.get("tokenizer.chat_template")
        self.bos = llm._model.token_get_text(llm.token_bos()) if llm.token_bos() >= 0 else ""
        self.eos = llm._model.token_get_text(llm.token_eos()) if llm.token_eos() >= 0 else ""
        load_ms = (time.perf_counter() - t) * 1000.0
        n_ctx_train = int(
            meta.get(f"{meta.get('general.architecture', 'llama')}.context_length", 0) or 0
        )
        self.send(
            p.Loaded(
                load_ms=load_ms,
                memory_bytes=max(0, psutil.Process().memory_info().rss - rss0),
                n_ctx=llm.n_ctx(),
                n_ctx_train=n_ctx_train,
                metadata=meta,
            )
        )

    def unload(self) -> None:
        """Free the model and its contexts so this process can serve another model (recycling).

        The scheduler sends this to an idle worker only; a request still running would keep a
        slot's Llama alive, so those are waited for (briefly) before the model goes.

        On the CPU the answer goes out once the contexts are gone, before the models are: what a
        context frees (KV cache, compute buffers) is this process's own memory, where freeing a
        model mostly unmaps its file, whose pages stay in the page cache either way. Unmapping
        takes ~20 ms for a 100 MB file, and the scheduler waits for this answer before it loads
        the next model, so a swap no longer waits for it. Offloaded weights are the GPU's memory:
        with offload the answer waits until the models are freed too."""
        deadline = time.monotonic() + 5.0
        with self.slots_cv:
            while any(s.busy for s in self.slots) and time.monotonic() < deadline:
                self.slots_cv.wait(0.1)
            slots, self.slots = self.slots, []
        llms = [s.llm for s in slots if s.llm is not None]
        for slot in slots:
            slot.llm = None
        offloaded = self.spec is not None and self.spec.n_gpu_layers != 0 and self.gpu_offload
        with self._grammar_lock:
            self._grammars.clear()
        self.spec = None
        self.template = None
        self.bos = self.eos = ""
        del slots
        if not offloaded:
            for llm in llms:
                _free_contexts(llm)
            _trim_heap()
            self.send(p.Unloaded(rss_bytes=_rss_without_mappings(self.spare_file_rss)))
        for llm in llms:
            with contextlib.suppress(Exception):
                llm.close()
        del llms
        # the youngest generation only: close() already freed the native memory and the rest
        # goes by reference count (a full collection costs ~15 ms on the swap's critical path and
        # frees nothing more, measured); models.recycle_limit bounds what older cycles could hold
        gc.collect(0)
        _trim_heap()
        if offloaded:
            self.send(p.Unloaded(rss_bytes=psutil.Process().memory_info().rss))

    # --- slots -----------------------------------------------------------------------------

    def acquire_slot(self, key: str | None, prompt: list[int] | None) -> Slot:
        with self.slots_cv:
            while True:
                free = [s for s in self.slots if not s.busy]
                chosen: Slot | None = None
                if key is not None:
                    bound = [s for s in self.slots if s.key == key]
                    if bound:
                        chosen = bound[0] if not bound[0].busy else None
                    elif free:
                        # prefer a slot no session owns, then the least recently used one
                        chosen = min(free, key=lambda s: (s.key is not None, s.last_used))
                elif free:
                    chosen = max(
                        free, key=lambda s: (s.key is None, _shared_prefix(s, prompt), -s.last_used)
                    )
                if chosen is not None:
                    chosen.busy = True
                    chosen.rebound = key is not None and chosen.key != key
                    chosen.displaced = chosen.key if chosen.key != key else None
                    if key is not None:
                        chosen.key = key
                    elif chosen.key is not None:
                        chosen.key = None
                    return chosen
                self.slots_cv.wait()

    def release_slot(self, slot: Slot) -> None:
        with self.slots_cv:
            slot.busy = False
            slot.last_used = time.monotonic()
            self.slots_cv.notify_all()

    def slot_llm(self, slot: Slot) -> llama_cpp.Llama:
        if slot.llm is None:
            slot.llm = self._new_llama()
        return slot.llm

    # --- requests --------------------------------------------------------------------------

    def grammar(self, gbnf: str) -> LlamaGrammar:
        """The grammar of a request, parsed once against this model's vocabulary.

        llama-cpp-python adds whatever llama_sampler_init_grammar returns to its sampler chain, and
        a NULL (a grammar llama.cpp cannot parse) is a SIGSEGV at the next token. The daemon sends
        proven grammars only; this check keeps that crash out even if one slipped through."""
        with self._grammar_lock:
            g = self._grammars.get(gbnf)
            if g is not None:
                self._grammars.move_to_end(gbnf)
                return g
            llm = self.slots[0].llm
            assert llm is not None
            sampler = llama_cpp.llama_sampler_init_grammar(
                llm._model.vocab, gbnf.encode("utf-8"), b"root"
            )
            if not sampler:
                raise InvalidRequest(
                    "llama.cpp cannot parse the grammar of this request; simplify its schema"
                )
            llama_cpp.llama_sampler_free(sampler)
            g = LlamaGrammar.from_string(gbnf, verbose=False)
            self._grammars[gbnf] = g
            while len(self._grammars) > GRAMMAR_CACHE:
                self._grammars.popitem(last=False)
            return g

    def generate(self, cmd: p.Generate) -> None:
        try:
            result = self._generate(cmd)
            self.send(p.Done(id=cmd.id, result=result))
        except ApplianceError as exc:
            kind = (
                "context_overflow" if exc.code == "context_length_exceeded" else "invalid_request"
            )
            self.send(p.Failed(id=cmd.id, message=exc.message, kind=kind))
        except Exception as exc:
            self.send(p.Failed(id=cmd.id, message=f"{type(exc).__name__}: {exc}"))
        finally:
            self.cancelled.discard(cmd.id)
            with self.credit_cv:
                self.credits.pop(cmd.id, None)

    def _generate(self, cmd: p.Generate) -> p.GenerateResult:
        params = cmd.params
        tools: list[Any] = []
        required = False
        grammar: LlamaGrammar | None = None
        if cmd.op == "chat":
            tools, required = cf.select_tools(params.tools, params.tool_choice)
            tools_prompt = cf.tools_system_prompt(tools, required) if tools else None
            messages = cf.normalise_messages(params.messages or [], tools_prompt)
            prompt = cf.render_prompt(
                self.template, messages, bos_token=self.bos, eos_token=self.eos
            )
            if cmd.grammar is not None:
                grammar = self.grammar(cmd.grammar)
        else:
            if params.prompt is None:
                raise InvalidRequest("prompt must be a string", param="prompt")
            prompt = params.prompt

        llm0 = self.slots[0].llm
        assert llm0 is not None
        tokens = llm0.tokenize(prompt.encode("utf-8"), add_bos=True, special=True)
        n_ctx = llm0.n_ctx()
        if len(tokens) >= n_ctx:
            raise ApplianceError(
                f"the prompt is {len(tokens)} tokens but this model's context holds {n_ctx}; "
                "shorten the messages or raise context_size in the model profile",
                code="context_length_exceeded",
            )
        max_tokens = params.max_tokens
        if max_tokens is None:
            max_tokens = n_ctx - len(tokens)
        max_tokens = max(1, min(max_tokens, n_ctx - len(tokens)))
        sampling = sampling_args(params)
        bias = parse_logit_bias(params.logit_bias, llm0.n_vocab())
        if bias:
            sampling["logits_processor"] = _bias_processor(bias)
        stop = params.stop

        slot = self.acquire_slot(cmd.slot_key, tokens)
        try:
            llm = self.slot_llm(slot)
            kv = self._prepare_slot(cmd, slot, llm, tokens)
            cached_before = _prefix_len(llm, tokens)
            t_start = time.perf_counter()
            out = decode(
                llm,
                tokens,
                max_tokens=max_tokens,
                sampling=sampling,
                grammar=grammar,
                stops=stop,
                is_eog=lambda t: bool(llama_cpp.llama_vocab_is_eog(llm._model.vocab, t)),
                piece=TokenPieces(llm),
                emit=None if tools else self._emitter(cmd),  # tool replies are parsed whole
                cancelled=lambda: cmd.id in self.cancelled,
                clock=time.perf_counter,
            )
            t_first = out.first_token_at
            t_end = time.perf_counter()
        finally:
            self.release_slot(slot)

        text, finish, n_out = out.text, out.finish_reason, out.completion_tokens
        result = p.GenerateResult(
            text=text,
            finish_reason=finish,
            usage=p.Usage(
                prompt_tokens=len(tokens),
                completion_tokens=n_out,
                total_tokens=len(tokens) + n_out,
                cached_tokens=cached_before,
            ),
            timings=p.Timings(
                prefill_ms=((t_first or t_end) - t_start) * 1000.0,
                decode_ms=(t_end - (t_first or t_end)) * 1000.0,
                total_ms=(t_end - t_start) * 1000.0,
                slot=slot.index,
            ),
            parked=kv.parked,
            restore=kv.restore,
        )
        if tools and finish != "cancelled":
            content, calls = cf.parse_tool_reply(text)
            result.content = content
            result.tool_calls = calls
            if calls:
                result.finish_reason = "tool_calls"
        return result

    def _emitter(self, cmd: p.Generate) -> Any:
        """Send deltas; with a window, wait for the daemon's credit before running ahead of it."""
        sent = 0
        if cmd.window > 0:
            with self.credit_cv:
                self.credits.setdefault(cmd.id, cmd.window)

        def emit(text: str) -> None:
            nonlocal sent
            if cmd.window > 0:
                with self.credit_cv:
                    while sent >= self.credits.get(cmd.id, 0) and cmd.id not in self.cancelled:
                        self.credit_cv.wait(1.0)
            sent += 1
            self.send(p.Delta(id=cmd.id, text=text))

        return emit

    def credit(self, cmd: p.Credit) -> None:
        with self.credit_cv:
            if cmd.id in self.credits:  # a credit for a finished request is dropped
                self.credits[cmd.id] = max(self.credits[cmd.id], cmd.upto)
                self.credit_cv.notify_all()

    def cancel(self, req_id: int) -> None:
        with self.credit_cv:
            self.cancelled.add(req_id)
            self.credit_cv.notify_all()

    def embed(self, cmd: p.Embed) -> None:
        try:
            llm = self.slots[0].llm
            assert llm is not None
            if self.spec is None or self.spec.kind != "embedding":
                raise InvalidRequest(
                    "this model is a chat model; use an embedding model for /v1/embeddings"
                )
            slot = self.acquire_slot(None, None)
            try:
                vectors, n_tokens = llm.embed(cmd.inputs, normalize=True, return_count=True)
            finally:
                self.release_slot(slot)
            if cmd.inputs and vectors and not isinstance(vectors[0], list):
                vectors = [vectors]
            per_token = any(vec and isinstance(vec[0], list) for vec in vectors)
            self.send(
                p.Done(
                    id=cmd.id,
                    result=p.EmbedResult(
                        embeddings=[] if per_token else vectors,
                        prompt_tokens=int(n_tokens),
                        per_token=per_token,
                    ),
                )
            )
        except ApplianceError as exc:
            self.send(p.Failed(id=cmd.id, message=exc.message, kind="invalid_request"))
        except Exception as exc:
            self.send(p.Failed(id=cmd.id, message=f"{type(exc).__name__}: {exc}"))

    def tokenize(self, cmd: p.Tokenize) -> None:
        llm = self.slots[0].llm
        assert llm is not None
        toks = llm.tokenize(cmd.text.encode("utf-8"), add_bos=True, special=True)
        self.send(p.Done(id=cmd.id, result=p.TokenizeResult(tokens=toks)))

    # --- KV state of a slot (sessions) -----------------------------------------------------

    def _save_state(self, llm: llama_cpp.Llama, path: str) -> p.SavedState:
        ctx = llm._ctx.ctx
        size = llama_cpp.llama_state_seq_get_size(ctx, 0)
        buf = (ctypes.c_uint8 * size)()
        n = llama_cpp.llama_state_seq_get_data(ctx, buf, size, 0)
        tokens = [int(t) for t in llm.input_ids[: llm.n_tokens]]
        nbytes = write_kv_file(path, tokens, memoryview(buf)[:n])
        return p.SavedState(
            bytes=nbytes, n_tokens=len(tokens), prefix_hash=token_prefix_hash(tokens)
        )

    def _load_state(
        self, llm: llama_cpp.Llama, tokens: list[int], data: bytes | memoryview
    ) -> None:
        llm.reset()
        ctx = llm._ctx.ctx
        mem = llama_cpp.llama_get_memory(ctx)
        llama_cpp.llama_memory_seq_rm(mem, -1, -1, -1)
        try:
            buf = (ctypes.c_uint8 * len(data)).from_buffer(data)  # a mapped file: no copy
        except TypeError:
            buf = (ctypes.c_uint8 * len(data)).from_buffer_copy(data)
        n = llama_cpp.llama_state_seq_set_data(ctx, buf, len(data), 0)
        if n == 0 or len(tokens) > llm.n_ctx():
            llama_cpp.llama_memory_seq_rm(mem, -1, -1, -1)
            raise ValueError("llama.cpp rejected the saved state")
        llm.input_ids[: len(tokens)] = tokens
        llm.n_tokens = len(tokens)
        llm._requires_eval = True

    def _drop_generated(self, slot: Slot, llm: llama_cpp.Llama) -> None:
        """Forget the tokens generated after the slot's last prompt.

        Generated tokens are evaluated one at a time, and llama.cpp does not always compute a
        token alone bit for bit as it does in a batch. Without them, a session's cache (hot, or
        parked and restored) holds exactly what a full prefill of the same tokens computes, so a
        resumed session answers as a fresh one would; its next prompt evaluates them again, in a
        batch with the new message."""
        n = slot.clean_len
        if n is not None and llm.n_tokens > n:
            llm._ctx.kv_cache_seq_rm(-1, n, -1)
            llm.n_tokens = n

    def _prepare_slot(
        self, cmd: p.Generate, slot: Slot, llm: llama_cpp.Llama, prompt: list[int]
    ) -> _SlotReport:
        """Before a request runs in `slot`: when the slot held another session, park that state
        (prompt-evaluated tokens only) into cmd.park_evicted_to, for a session's request and for a
        keyless one alike; when the slot was just given to cmd.slot_key, restore the key's own
        parked state when that helps. Returns what happened, for the result."""
        out = _SlotReport()
        old = slot.displaced
        if cmd.slot_key is not None or old:
            self._drop_generated(slot, llm)
        slot.clean_len = len(prompt)
        if cmd.park_evicted_to and old and llm.n_tokens > 0 and _FILE_SAFE_KEY.match(old):
            path = os.path.join(cmd.park_evicted_to, f"{old}.kv")
            try:
                state = self._save_state(llm, path)
                out.parked = [p.ParkReport(slot_key=old, path=path, state=state)]
            except Exception as exc:
                out.parked = [p.ParkReport(slot_key=old, error=f"saving KV state failed: {exc}")]
        if slot.rebound and cmd.restore_from:
            out.restore = self._restore_for_prompt(
                llm, cmd.restore_from, cmd.restore_prefix_hash, prompt
            )
        return out

    def _restore_for_prompt(
        self, llm: llama_cpp.Llama, path: str, expect_hash: str | None, prompt: list[int]
    ) -> p.RestoreReport:
        t = time.perf_counter()
        try:
            saved, data = map_kv_file(path)
        except (OSError, ValueError) as exc:
            return p.RestoreReport(restored=False, error=f"the parked state cannot be used: {exc}")
        if expect_hash is not None and token_prefix_hash(saved) != expect_hash:
            # not damage: the file was parked again after the daemon looked its entry up
            return p.RestoreReport(
                restored=False, reason="the parked state covers other tokens than its index entry"
            )
        shared = 0
        for a, b in zip(saved, prompt, strict=False):
            if a != b:
                break
            shared += 1
        if shared <= _prefix_len(llm, prompt) or 2 * shared < len(saved):
            return p.RestoreReport(
                restored=False,
                n_tokens=len(saved),
                shared_tokens=shared,
                reason="the parked state covers a different prompt prefix",
            )
        try:
            self._load_state(llm, saved, data)
        except Exception as exc:
            llm.reset()
            return p.RestoreReport(restored=False, error=f"restoring KV state failed: {exc}")
        return p.RestoreReport(
            restored=True,
            n_tokens=len(saved),
            shared_tokens=shared,
            bytes=len(data),
            ms=(time.perf_counter() - t) * 1000.0,
        )

    def save_slot(self, cmd: p.SaveSlot) -> None:
        try:
            slot = next((s for s in self.slots if s.key == cmd.slot_key), None)
            if slot is None or slot.llm is None or slot.llm.n_tokens == 0:
                self.send(p.Done(id=cmd.id, result=p.SaveResult(state=None)))
                return
            with self.slots_cv:
                while slot.busy:
                    self.slots_cv.wait()
                slot.busy = True
            try:
                if slot.key != cmd.slot_key or slot.llm is None or slot.llm.n_tokens == 0:
                    info = None  # the slot was given to another key while we waited
                else:
                    self._drop_generated(slot, slot.llm)
                    info = self._save_state(slot.llm, cmd.path)
            finally:
                self.release_slot(slot)
            self.send(p.Done(id=cmd.id, result=p.SaveResult(state=info)))
        except Exception as exc:
            self.send(p.Failed(id=cmd.id, message=f"saving KV state failed: {exc}"))

    def restore_slot(self, cmd: p.RestoreSlot) -> None:
        slot = self.acquire_slot(cmd.slot_key, None)
        try:
            t = time.perf_counter()
            tokens, data = read_kv_file(cmd.path)
            self._load_state(self.slot_llm(slot), tokens, data)
            slot.clean_len = len(tokens)
            ms = (time.perf_counter() - t) * 1000.0
            self.send(
                p.Done(
                    id=cmd.id,
                    result=p.RestoreReport(
                        restored=True, n_tokens=len(tokens), bytes=len(data), ms=ms
                    ),
                )
            )
        except Exception as exc:
            if slot.llm is not None:
                slot.llm.reset()
            self.send(p.Failed(id=cmd.id, message=f"restoring KV state failed: {exc}"))
        finally:
            self.release_slot(slot)


def _bias_processor(bias: dict[int, float]) -> llama_cpp.LogitsProcessorList:
    ids = np.fromiter(bias.keys(), dtype=np.intc)
    values = np.fromiter(bias.values(), dtype=np.single)

    def add_bias(_input_ids: Any, scores: Any) -> Any:
        scores[ids] += values
        return scores

    return llama_cpp.LogitsProcessorList([add_bias])


class TokenPieces:
    """The bytes of one token as text (no special tokens), through a reused buffer."""

    def __init__(self, llm: llama_cpp.Llama) -> None:
        self.vocab = llm._model.vocab
        self.buf = ctypes.create_string_buffer(64)

    def __call__(self, token: int) -> bytes:
        n = llama_cpp.llama_token_to_piece(self.vocab, token, self.buf, len(self.buf), 0, False)
        if n < 0:  # a longer piece than the buffer: grow it and ask again
            self.buf = ctypes.create_string_buffer(-n)
            n = llama_cpp.llama_token_to_piece(self.vocab, token, self.buf, len(self.buf), 0, False)
        return self.buf.raw[:n]


def _prefix_len(llm: llama_cpp.Llama, tokens: list[int]) -> int:
    n = 0
    for a, b in zip(llm.input_ids[: llm.n_tokens], tokens, strict=False):
        if a != b:
            break
        n += 1
    return n


def _shared_prefix(slot: Slot, tokens: list[int] | None) -> int:
    if slot.llm is None or not tokens:
        return 0
    return _prefix_len(slot.llm, tokens)


def _free_contexts(llm: llama_cpp.Llama) -> None:
    """Free a Llama's context and batch (its KV cache and compute buffers), not yet its model.
    Llama.close() later closes what is left; closing twice is a no-op in llama-cpp-python."""
    for part in ("_ctx", "_batch"):
        with contextlib.suppress(Exception):
            getattr(llm, part).close()


def _status_bytes(*names: str) -> dict[str, int]:
    """Fields of /proc/self/status given in kB (RssAnon, RssFile...), in bytes; {} off Linux."""
    out: dict[str, int] = {}
    with contextlib.suppress(OSError, ValueError), open("/proc/self/status") as f:
        for line in f:
            name, _, value = line.partition(":")
            if name in names:
                out[name] = int(value.split()[0]) * 1024
    return out


def _rss_without_mappings(file_rss: int) -> int:
    """This process's resident memory, counting file-backed pages as they were before the model
    was loaded (`file_rss`): the model's mapping is about to go, and its pages are the page
    cache's. The whole RSS where /proc/self/status does not say."""
    fields = _status_bytes("RssAnon", "RssShmem")
    if len(fields) < 2:
        return int(psutil.Process().memory_info().rss)
    return sum(fields.values()) + file_rss


def _trim_heap() -> None:
    """Give freed heap pages back to the system (glibc keeps them otherwise), so a recycled
    worker's footprint returns to a spare's."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _read_frames(inp: BinaryIO, worker: Worker, jobs: queue.Queue[p.Command | None]) -> None:
    try:
        while True:
            header = inp.read(p.HEADER.size)
            if len(header) < p.HEADER.size:
                break
            size = p.frame_size(header)  # over MAX_FRAME: raises, and the worker stops
            body = inp.read(size)
            if len(body) < size:
                break
            cmd = p.decode_command(body)
            if isinstance(cmd, p.Cancel):
                worker.cancel(cmd.id)
            elif isinstance(cmd, p.Credit):
                worker.credit(cmd)
            elif isinstance(cmd, p.Ping):
                worker.send(p.Pong())
            else:
                jobs.put(cmd)
    finally:
        jobs.put(None)


def main() -> int:
    die_with_parent()  # again, for a worker started another way than `python -m`
    out = os.fdopen(os.dup(1), "wb", buffering=0)
    os.dup2(2, 1)  # anything llama.cpp prints goes to stderr, never into the protocol
    sys.stdout = sys.stderr
    worker = Worker(out)
    gpu = bool(llama_cpp.llama_supports_gpu_offload())
    worker.send(
        p.Hello(
            pid=os.getpid(),
            llama_cpp_version=llama_cpp.__version__,
            gpu_offload=gpu,
            import_ms=IMPORT_MS,
        )
    )
    jobs: queue.Queue[p.Command | None] = queue.Queue()
    threading.Thread(
        target=_read_frames, args=(sys.stdin.buffer, worker, jobs), daemon=True
    ).start()
    while True:
        cmd = jobs.get()
        if cmd is None or isinstance(cmd, p.Shutdown):
            break
        if isinstance(cmd, p.Load):
            worker.load(cmd)
        elif isinstance(cmd, p.Prewarm):
            worker.prewarm(cmd)
        elif isinstance(cmd, p.Unload):
            worker.unload()
        elif isinstance(cmd, p.Generate):
            threading.Thread(target=worker.generate, args=(cmd,), daemon=True).start()
        elif isinstance(cmd, p.Embed):
            threading.Thread(target=worker.embed, args=(cmd,), daemon=True).start()
        elif isinstance(cmd, p.Tokenize):
            worker.tokenize(cmd)
        elif isinstance(cmd, p.SaveSlot):
            threading.Thread(target=worker.save_slot, args=(cmd,), daemon=True).start()
        elif isinstance(cmd, p.RestoreSlot):
            threading.Thread(target=worker.restore_slot, args=(cmd,), daemon=True).start()
    os._exit(0)  # skip interpreter teardown: llama.cpp frees nothing we still need
