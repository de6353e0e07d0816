"""The batched engine: every request of a model decodes in one llama context, one sequence each.

One thread owns the context. Each step it builds one `llama_batch` with the next token of every
generating sequence plus a bounded chunk of each pending prompt (chunked prefill: a long prompt
costs the others one step per chunk, not its whole prefill), decodes it once, and samples every
sequence that has an output with its own sampler chain. Requests come and go between steps
(continuous batching); so do the commands that touch a sequence's KV state (save, restore), run
on this thread between two steps.

Which sequence a request gets (`choose`): a session's own sequence when it holds one (its tokens
are reused), else a free one, preferring one no session owns and the longest shared prefix. A
prompt that shares a longer prefix with another sequence (an agent's system prompt, a sibling
session) copies those cells (`llama_memory_seq_cp`) instead of evaluating them again. When a
sequence bound to another session is taken, that session's state is parked (see `slots`).
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable
from typing import Any

import llama_cpp
import numpy as np

from appliance.models.worker import protocol as p
from appliance.models.worker.jobs import EmbedJob, GenJob, Seq
from appliance.models.worker.kvstate import RamTier
from appliance.models.worker.model import Model
from appliance.models.worker.slots import SlotKeeper

IDLE_POLL_S = 0.05
"""How often a loop whose every sequence waits for flow-control credit looks again."""


class Call:
    """A function to run on the engine thread between steps; `ready` defers it (a save waits
    for the sequence's request to end)."""

    def __init__(self, fn: Callable[[], Any], ready: Callable[[], bool] | None = None) -> None:
        self.fn = fn
        self.ready = ready or (lambda: True)
        self.done = threading.Event()
        self.result: Any = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.result = self.fn()
        except BaseException as exc:  # handed to the waiting thread
            self.error = exc
        finally:
            self.done.set()

    def wait(self) -> Any:
        self.done.wait()
        if self.error is not None:
            raise self.error
        return self.result


class Engine:
    def __init__(
        self, model: Model, send: Callable[[list[p.Event]], None], *, ram_budget: int = 0
    ) -> None:
        self.model = model
        self.send = send
        lay = model.layout
        self.seqs = [Seq(i) for i in range(lay.n_seq)]
        self.ram = RamTier(ram_budget)
        self.slots = SlotKeeper(model, self.seqs, self.ram)
        self.n_batch = lay.n_batch
        self.batch: Any = llama_cpp.llama_batch_init(lay.n_batch, 0, 1)
        self.cv = threading.Condition()
        self.inbox: collections.deque[GenJob | EmbedJob | Call] = collections.deque()
        self.waiting: list[GenJob] = []
        self.active: list[GenJob] = []
        self.embeds: list[EmbedJob] = []
        self.deferred: list[Call] = []
        self.cancelled: set[int] = set()
        self.credits: dict[int, int] = {}
        self.outbox: list[p.Event] = []
        self.steps = 0
        self.decoded_tokens = 0
        self.decode_s = 0.0
        """Time inside llama_decode; the rest of the engine thread's busy time is its own."""
        self.busy_s = 0.0
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="engine", daemon=True)
        self._thread.start()

    # --- other threads ----------------------------------------------------------------------

    def submit(self, job: GenJob | EmbedJob | Call) -> None:
        with self.cv:
            if isinstance(job, GenJob) and job.cmd.window > 0:
                self.credits.setdefault(job.cmd.id, job.cmd.window)
            self.inbox.append(job)
            self.cv.notify_all()

    def call(self, fn: Callable[[], Any], ready: Callable[[], bool] | None = None) -> Any:
        c = Call(fn, ready)
        self.submit(c)
        return c.wait()

    def cancel(self, req_id: int) -> None:
        with self.cv:
            self.cancelled.add(req_id)
            self.cv.notify_all()

    def credit(self, req_id: int, upto: int) -> None:
        with self.cv:
            if req_id in self.credits:  # a credit for a finished request is dropped
                self.credits[req_id] = max(self.credits[req_id], upto)
                self.cv.notify_all()

    def stop(self, timeout: float = 5.0) -> None:
        """Let running requests finish (up to `timeout`), fail the rest, and end the thread."""
        deadline = time.monotonic() + timeout
        with self.cv:
            while (self.active or self.waiting or self.inbox) and time.monotonic() < deadline:
                self.cv.wait(0.05)
            self._stopping = True
            self.cv.notify_all()
        self._thread.join(timeout=max(1.0, deadline - time.monotonic() + 1.0))
        llama_cpp.llama_batch_free(self.batch)
        self.slots.close()

    # --- the engine thread ------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self.cv:
                while not self._stopping and not self.inbox and not self._runnable():
                    idle = not (self.active or self.waiting or self.embeds or self.deferred)
                    self.cv.wait(None if idle else IDLE_POLL_S)
                if self._stopping:
                    self._abandon()
                    return
                items = list(self.inbox)
                self.inbox.clear()
                cancelled = set(self.cancelled)
            for item in items:
                if isinstance(item, Call):
                    self.deferred.append(item)
                elif isinstance(item, EmbedJob):
                    self.embeds.append(item)
                else:
                    self.waiting.append(item)
            t0 = time.perf_counter()
            self._run_calls()
            self._reap(cancelled)
            if self.embeds:
                self._embed_all()
            self._admit()
            self._step()
            self._flush()
            self.busy_s += time.perf_counter() - t0
            with self.cv:
                self.cv.notify_all()  # stop() waits for the work to drain

    def _runnable(self) -> bool:
        if self.embeds or any(c.ready() for c in self.deferred):
            return True
        if any(self._can_decode(j) for j in self.active):
            return True
        return any(self.slots.choose(j.cmd.slot_key, j.prompt) is not None for j in self.waiting)

    def _can_decode(self, job: GenJob) -> bool:
        if job.pending:
            return True
        if job.next_token is None:
            return False
        window = job.cmd.window
        return window <= 0 or job.sent < self.credits.get(job.cmd.id, window)

    def _run_calls(self) -> None:
        for c in [c for c in self.deferred if c.ready()]:
            self.deferred.remove(c)
            c.run()

    def _reap(self, cancelled: set[int]) -> None:
        for job in [j for j in self.waiting if j.cmd.id in cancelled]:
            self.waiting.remove(job)
            self._finish(job, "cancelled")
        for job in [j for j in self.active if j.cmd.id in cancelled]:
            self._finish(job, "cancelled")

    def _admit(self) -> None:
        for job in list(self.waiting):
            seq = self.slots.choose(job.cmd.slot_key, job.prompt)
            if seq is None:
                continue
            self.waiting.remove(job)
            try:
                self.slots.prepare(job, seq)
            except Exception as exc:
                seq.job = None
                self._fail(job, f"preparing its sequence failed: {exc}")
                continue
            job.t_start = time.perf_counter()
            self.active.append(job)

    def _step(self) -> None:
        """One decode of every generating sequence's next token and prompt chunks."""
        batch = self.batch
        n = 0
        outputs: list[tuple[GenJob, int]] = []
        decoding: list[GenJob] = []
        chunks: list[tuple[GenJob, int]] = []
        for job in self.active:
            if job.next_token is not None and self._can_decode(job):
                assert job.seq is not None
                _put(batch, n, job.next_token, len(job.seq.tokens), job.seq.id, True)
                outputs.append((job, n))
                decoding.append(job)
                n += 1
        for job in self.active:
            room = self.n_batch - n
            if room <= 0:
                break
            if not job.pending:
                continue
            assert job.seq is not None
            take = min(len(job.pending), room)
            base = len(job.seq.tokens)
            last = take == len(job.pending)
            for k in range(take):
                _put(batch, n, job.pending[k], base + k, job.seq.id, last and k == take - 1)
                n += 1
            if last:
                outputs.append((job, n - 1))
            chunks.append((job, take))
        if n == 0:
            return
        batch.n_tokens = n
        t0 = time.perf_counter()
        rc = int(llama_cpp.llama_decode(self.model.ctx, batch))
        self.decode_s += time.perf_counter() - t0
        self.steps += 1
        if rc != 0:
            what = "the KV cache is full" if rc == 1 else f"llama_decode returned {rc}"
            for job in {id(j): j for j in decoding + [c[0] for c in chunks]}.values():
                self._fail(job, f"decoding failed: {what}")
            return
        self.decoded_tokens += n
        for job in decoding:
            assert job.seq is not None and job.next_token is not None
            job.seq.tokens.append(job.next_token)
            job.next_token = None
        for job, take in chunks:
            assert job.seq is not None
            job.seq.tokens.extend(job.pending[:take])
            del job.pending[:take]
            self.slots.prompt_evaluated += take
        for job, index in outputs:
            if job.finish is None:
                token = job.sampler.sample(self.model.ctx, index)
                if job.cmd.params.logprobs is not None:
                    job.new_logprobs.append(self._logprob(index, token, job.cmd.params.logprobs))
                self._on_token(job, token)

    def _on_token(self, job: GenJob, token: int) -> None:
        seq = job.seq
        assert seq is not None
        if job.t_first is None:
            job.t_first = time.perf_counter()
        if job.cmd.id in self.cancelled:
            self._finish(job, "cancelled")
            return
        if self.model.is_eog(token):
            if job.new_logprobs:
                job.new_logprobs.pop()  # the end of the reply is no text of it
            self._finish(job, "stop")
            return
        job.n_out += 1
        text = job.assembler.feed(self.model.piece(token))
        if text:
            self._emit(job, text)
        if job.assembler.stopped:
            self._finish(job, "stop")
        elif job.n_out >= job.max_tokens or len(seq.tokens) + 1 >= self.model.n_ctx_seq:
            self._finish(job, "length")
        else:
            job.next_token = token

    def _logprob(self, index: int, token: int, top: int) -> p.TokenLogprob:
        """The token's log probability in the model's distribution at batch output `index`."""
        model = self.model
        ptr = llama_cpp.llama_get_logits_ith(model.ctx, index)
        logits = np.ctypeslib.as_array(ptr, shape=(model.n_vocab,)).astype(np.float64)
        peak = float(logits.max())
        lse = peak + float(np.log(np.exp(logits - peak).sum()))
        alts: list[p.TopLogprob] = []
        if top > 0:
            best = np.argpartition(logits, -top)[-top:]
            for t in sorted(best.tolist(), key=lambda t: -logits[t]):
                raw = model.piece(int(t))
                alts.append(
                    p.TopLogprob(
                        token=raw.decode("utf-8", "replace"),
                        logprob=float(logits[t]) - lse,
                        bytes=list(raw),
                    )
                )
        raw = model.piece(token)
        return p.TokenLogprob(
            token=raw.decode("utf-8", "replace"),
            logprob=float(logits[token]) - lse,
            bytes=list(raw),
            top=alts,
        )

    def _emit(self, job: GenJob, text: str) -> None:
        job.parts.append(text)
        lps = None
        if job.new_logprobs:
            lps, job.new_logprobs = job.new_logprobs, []
            job.logprobs.extend(lps)
        if job.stream:
            job.sent += 1
            self.outbox.append(p.Delta(id=job.cmd.id, text=text, logprobs=lps))

    def _finish(self, job: GenJob, reason: str) -> None:
        tail = job.assembler.finish()
        if tail:
            self._emit(job, tail)
        job.finish = reason
        t_end = time.perf_counter()
        try:
            result = job.result(t_end)
            self.outbox.append(p.Done(id=job.cmd.id, result=result))
        except Exception as exc:
            self.outbox.append(p.Failed(id=job.cmd.id, message=f"{type(exc).__name__}: {exc}"))
        self._release(job, drop_cells=reason == "cancelled" and job.cmd.slot_key is None)

    def _fail(self, job: GenJob, message: str, kind: str = "error") -> None:
        job.finish = "failed"
        self.outbox.append(p.Failed(id=job.cmd.id, message=message, kind=kind))
        self._release(job, drop_cells=True)

    def _abandon(self) -> None:
        """At the stop: fail what is still here, so no caller waits for an engine that is gone."""
        gone = "the model is being unloaded; retry the request"
        for item in list(self.inbox):
            if isinstance(item, Call):
                self.deferred.append(item)
            elif isinstance(item, EmbedJob):
                self.embeds.append(item)
            else:
                item.sampler.close()
                self.outbox.append(p.Failed(id=item.cmd.id, message=gone))
        self.inbox.clear()
        for job in self.active + self.waiting:
            self._fail(job, gone)
        for emb in self.embeds:
            self.outbox.append(p.Failed(id=emb.cmd.id, message=gone))
        self.embeds = []
        for c in self.deferred:
            c.error = RuntimeError(gone)
            c.done.set()
        self.deferred = []
        self._flush()

    def _release(self, job: GenJob, *, drop_cells: bool) -> None:
        job.sampler.close()
        if job in self.active:
            self.active.remove(job)
        if job in self.waiting:
            self.waiting.remove(job)
        seq = job.seq
        if seq is not None:
            if drop_cells:
                self.slots.empty(seq)
            seq.job = None
            seq.last_used = time.monotonic()
        with self.cv:
            self.cancelled.discard(job.cmd.id)
            self.credits.pop(job.cmd.id, None)

    def _flush(self) -> None:
        if self.outbox:
            out, self.outbox = self.outbox, []
            self.send(out)

    # --- embeddings -----------------------------------------------------------------------

    def _embed_all(self) -> None:
        """Every waiting embedding request, its inputs packed into as few batches as fit: up to
        one sequence per input and n_batch tokens per decode, pooled per sequence."""
        jobs, self.embeds = self.embeds, []
        model = self.model
        per_token = model.pooling == llama_cpp.LLAMA_POOLING_TYPE_NONE
        queue = [(job, i) for job in jobs for i in range(len(job.tokens))]
        if per_token:
            queue = []
        batch = self.batch
        try:
            while queue:
                n = 0
                packed: list[tuple[EmbedJob, int]] = []
                while queue and len(packed) < model.layout.n_seq:
                    job, i = queue[0]
                    toks = job.tokens[i]
                    if packed and n + len(toks) > self.n_batch:
                        break
                    queue.pop(0)
                    for pos, tok in enumerate(toks):
                        _put(batch, n, tok, pos, len(packed), True)
                        n += 1
                    packed.append((job, i))
                model.clear()
                batch.n_tokens = n
                rc = int(llama_cpp.llama_decode(model.ctx, batch))
                self.steps += 1
                if rc != 0:
                    raise RuntimeError(f"llama_decode returned {rc}")
                for s, (job, i) in enumerate(packed):
                    ptr = llama_cpp.llama_get_embeddings_seq(model.ctx, s)
                    job.vectors[i] = _normalised(ptr[: model.n_embd])
            model.clear()
        except Exception as exc:
            for job in jobs:
                self.outbox.append(p.Failed(id=job.cmd.id, message=f"embedding failed: {exc}"))
            return
        for job in jobs:
            self.outbox.append(
                p.Done(
                    id=job.cmd.id,
                    result=p.EmbedResult(
                        embeddings=[] if per_token else [v or [] for v in job.vectors],
                        prompt_tokens=sum(len(t) for t in job.tokens),
                        per_token=per_token,
                    ),
                )
            )

    # --- introspection --------------------------------------------------------------------

    def stats(self) -> p.StatsResult:
        keeper = self.slots
        return p.StatsResult(
            sequences=[
                p.SeqInfo(
                    id=s.id,
                    n_tokens=len(s.tokens),
                    cells=self.model.seq_pos_max(s.id) + 1,
                    key=s.key,
                    busy=s.job is not None,
                )
                for s in self.seqs
            ],
            steps=self.steps,
            decoded_tokens=self.decoded_tokens,
            decode_ms=self.decode_s * 1000.0,
            busy_ms=self.busy_s * 1000.0,
            prompt_evaluated=keeper.prompt_evaluated,
            prompt_reused=keeper.prompt_reused,
            prompt_shared=keeper.prompt_shared,
            ram_entries=len(self.ram),
            ram_bytes=self.ram.bytes,
            ram_hits=self.ram.hits,
            ram_spilled=self.ram.spilled,
        )


def _put(batch: Any, i: int, token: int, pos: int, seq: int, logits: bool) -> None:
    batch.token[i] = token
    batch.pos[i] = pos
    batch.n_seq_id[i] = 1
    batch.seq_id[i][0] = seq
    batch.logits[i] = logits


def _normalised(vec: list[float]) -> list[float]:
    norm = sum(x * x for x in vec) ** 0.5
    return [x / norm for x in vec] if norm > 0 else vec
