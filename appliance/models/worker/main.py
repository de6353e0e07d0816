"""The model worker process: one loaded model, llama.cpp inside, commands on stdin.

Started as `python -m appliance.models.worker` (its `__main__`). It imports llama_cpp first and says
Hello, then waits: that is the pre-warmed spare the scheduler hands the next load to, so waking a
model costs the model load alone. A llama.cpp abort, an OOM kill or SIGKILL ends this process
only; the daemon sees the pipe close and fails the requests this worker was serving.

A loaded model is one `Model` (the weights once, one context with a sequence per parallel slot)
and one `Engine` thread that decodes every request together (appliance.models.worker.engine).
This module is the process and its protocol: it reads frames, renders and tokenizes prompts on
the request's own thread, hands jobs to the engine, and writes the engine's events back.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import os
import queue
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, BinaryIO

from appliance.models.worker import protocol as p
from appliance.models.worker.lifeline import die_with_parent

_t0 = time.perf_counter()
import llama_cpp  # noqa: E402  (the point of a spare worker is to pay for this import early)
import psutil  # noqa: E402

from appliance.errors import ApplianceError, InvalidRequest  # noqa: E402
from appliance.models import chat_format as cf  # noqa: E402
from appliance.models.worker.engine import Engine  # noqa: E402
from appliance.models.worker.jobs import EmbedJob, GenJob  # noqa: E402
from appliance.models.worker.model import LoadError, Model  # noqa: E402
from appliance.models.worker.sampler import GrammarCache, Sampler, parse_logit_bias  # noqa: E402

IMPORT_MS = (time.perf_counter() - _t0) * 1000.0


class Worker:
    def __init__(self, out: BinaryIO) -> None:
        self.out = out
        self.write_lock = threading.Lock()
        self.model: Model | None = None
        self.engine: Engine | None = None
        self.grammars: GrammarCache | None = None
        self.template: str | None = None
        self.gpu_offload = bool(llama_cpp.llama_supports_gpu_offload())
        self.spare_file_rss = 0
        """File-backed resident bytes before the model was loaded (see unload)."""

    # --- plumbing ---------------------------------------------------------------------------

    def send(self, msg: p.Event) -> None:
        self.send_many([msg])

    def send_many(self, msgs: list[p.Event]) -> None:
        data = b"".join(p.encode(m) for m in msgs)
        with self.write_lock:
            self.out.write(data)
            self.out.flush()

    def _loaded(self) -> tuple[Model, Engine]:
        if self.model is None or self.engine is None:
            raise InvalidRequest("no model is loaded in this worker")
        return self.model, self.engine

    # --- load ------------------------------------------------------------------------------

    def prewarm(self, cmd: p.Prewarm) -> None:
        """Open the file vocabulary-only: backend set-up and the first mapping are paid now."""
        params = llama_cpp.llama_model_default_params()
        params.vocab_only = True
        with contextlib.suppress(Exception):  # best effort; the real load reports any problem
            model = llama_cpp.llama_model_load_from_file(cmd.model_path.encode(), params)
            if model:
                llama_cpp.llama_model_free(model)

    def load(self, spec: p.Load) -> None:
        rss0 = psutil.Process().memory_info().rss
        self.spare_file_rss = _status_bytes("RssFile").get("RssFile", 0)
        t = time.perf_counter()
        try:
            model = Model(spec)
        except LoadError as exc:
            self.send(p.Failed(id=0, message=str(exc)))
            return
        self.model = model
        self.grammars = GrammarCache(model.vocab)
        self.template = spec.chat_template or model.chat_template
        self.engine = Engine(model, self.send_many, ram_budget=spec.kv_ram_budget)
        load_ms = (time.perf_counter() - t) * 1000.0
        self.send(
            p.Loaded(
                load_ms=load_ms,
                memory_bytes=max(0, psutil.Process().memory_info().rss - rss0),
                n_ctx=model.n_ctx_seq,
                n_ctx_train=model.n_ctx_train,
                metadata=model.metadata,
            )
        )

    def unload(self) -> None:
        """Free the model and its context so this process can serve another model (recycling).

        The scheduler sends this to an idle worker only; a request still running is waited for
        (briefly) before the model goes.

        On the CPU the answer goes out once the context is gone, before the weights are: what a
        context frees (KV cache, compute buffers) is this process's own memory, where freeing a
        model mostly unmaps its file, whose pages stay in the page cache either way. Unmapping
        takes ~20 ms for a 100 MB file, and the scheduler waits for this answer before it loads
        the next model, so a swap does not wait for it. Offloaded weights are the GPU's memory:
        with offload the answer waits until the weights are freed too."""
        model, engine = self.model, self.engine
        self.model = self.engine = None
        offloaded = model is not None and model.spec.n_gpu_layers != 0 and self.gpu_offload
        if engine is not None:
            engine.stop()
        if self.grammars is not None:
            self.grammars.close()
            self.grammars = None
        self.template = None
        if model is not None:
            model.free_context()
        if not offloaded:
            _trim_heap()
            self.send(p.Unloaded(rss_bytes=_rss_without_mappings(self.spare_file_rss)))
        if model is not None:
            model.free()
        del model, engine
        # the youngest generation only: the native memory is freed already and the rest goes by
        # reference count (a full collection costs ~15 ms and frees nothing more, measured)
        gc.collect(0)
        _trim_heap()
        if offloaded:
            self.send(p.Unloaded(rss_bytes=psutil.Process().memory_info().rss))

    # --- requests --------------------------------------------------------------------------

    def generate(self, cmd: p.Generate) -> None:
        """Render and tokenize on this thread, then hand the job to the engine (which answers)."""
        try:
            self._loaded()[1].submit(self._job(cmd))
        except ApplianceError as exc:
            kind = (
                "context_overflow" if exc.code == "context_length_exceeded" else "invalid_request"
            )
            self.send(p.Failed(id=cmd.id, message=exc.message, kind=kind))
        except Exception as exc:
            self.send(p.Failed(id=cmd.id, message=f"{type(exc).__name__}: {exc}"))

    def _job(self, cmd: p.Generate) -> GenJob:
        model, _ = self._loaded()
        if model.embedding:
            raise InvalidRequest("this model is an embedding model; use it for /v1/embeddings")
        params = cmd.params
        tools: list[Any] = []
        if cmd.op == "chat":
            tools, required = cf.select_tools(params.tools, params.tool_choice)
            tools_prompt = cf.tools_system_prompt(tools, required) if tools else None
            messages = cf.normalise_messages(params.messages or [], tools_prompt)
            prompt = cf.render_prompt(
                self.template, messages, bos_token=model.bos_text, eos_token=model.eos_text
            )
        else:
            if params.prompt is None:
                raise InvalidRequest("prompt must be a string", param="prompt")
            prompt = params.prompt
        tokens = model.tokenize(prompt)
        n_ctx = model.n_ctx_seq
        if len(tokens) >= n_ctx:
            raise ApplianceError(
                f"the prompt is {len(tokens)} tokens but this model's context holds {n_ctx}; "
                "shorten the messages or raise context_size in the model profile",
                code="context_length_exceeded",
            )
        if not tokens:
            raise InvalidRequest("the prompt is empty", param="prompt")
        max_tokens = params.max_tokens if params.max_tokens is not None else n_ctx - len(tokens)
        max_tokens = max(1, min(max_tokens, n_ctx - len(tokens)))
        bias = parse_logit_bias(params.logit_bias, model.n_vocab)
        assert self.grammars is not None
        grammar = self.grammars.sampler(cmd.grammar) if cmd.grammar is not None else None
        sampler = Sampler(params, n_vocab=model.n_vocab, bias=bias, grammar=grammar)
        return GenJob(
            cmd=cmd,
            prompt=tokens,
            max_tokens=max_tokens,
            sampler=sampler,
            stops=params.stop,
            tools=bool(tools),
        )

    def embed(self, cmd: p.Embed) -> None:
        try:
            model, engine = self._loaded()
            if not model.embedding:
                raise InvalidRequest(
                    "this model is a chat model; use an embedding model for /v1/embeddings"
                )
            n_batch = model.layout.n_batch
            tokens = [model.tokenize(text, special=False)[:n_batch] for text in cmd.inputs]
            engine.submit(EmbedJob(cmd=cmd, tokens=tokens))
        except ApplianceError as exc:
            self.send(p.Failed(id=cmd.id, message=exc.message, kind="invalid_request"))
        except Exception as exc:
            self.send(p.Failed(id=cmd.id, message=f"{type(exc).__name__}: {exc}"))

    def tokenize(self, cmd: p.Tokenize) -> None:
        try:
            model, _ = self._loaded()
            self.send(p.Done(id=cmd.id, result=p.TokenizeResult(tokens=model.tokenize(cmd.text))))
        except ApplianceError as exc:
            self.send(p.Failed(id=cmd.id, message=exc.message, kind="invalid_request"))

    def cancel(self, req_id: int) -> None:
        if self.engine is not None:
            self.engine.cancel(req_id)

    def credit(self, cmd: p.Credit) -> None:
        if self.engine is not None:
            self.engine.credit(cmd.id, cmd.upto)

    # --- KV state of a session's sequence ------------------------------------------------

    def save_slot(self, cmd: p.SaveSlot) -> None:
        try:
            _, engine = self._loaded()
            keeper = engine.slots

            def idle() -> bool:  # a running request of the session finishes first
                seq = keeper.bound(cmd.slot_key)
                return seq is None or seq.job is None

            info = engine.call(lambda: keeper.save(cmd.slot_key, cmd.path), ready=idle)
            self.send(p.Done(id=cmd.id, result=p.SaveResult(state=info)))
        except Exception as exc:
            self.send(p.Failed(id=cmd.id, message=f"saving KV state failed: {exc}"))

    def restore_slot(self, cmd: p.RestoreSlot) -> None:
        try:
            _, engine = self._loaded()
            keeper = engine.slots
            report = engine.call(
                lambda: keeper.restore(cmd.slot_key, cmd.path),
                ready=lambda: keeper.choose(cmd.slot_key, None) is not None,
            )
            self.send(p.Done(id=cmd.id, result=report))
        except Exception as exc:
            self.send(p.Failed(id=cmd.id, message=f"restoring KV state failed: {exc}"))

    def stats(self, cmd: p.Stats) -> None:
        try:
            _, engine = self._loaded()
            self.send(p.Done(id=cmd.id, result=engine.call(engine.stats)))
        except Exception as exc:
            self.send(p.Failed(id=cmd.id, message=f"{type(exc).__name__}: {exc}"))


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


_THREADED: dict[type, Callable[[Worker, Any], None]] = {
    p.Generate: Worker.generate,
    p.Embed: Worker.embed,
    p.SaveSlot: Worker.save_slot,
    p.RestoreSlot: Worker.restore_slot,
    p.Stats: Worker.stats,
}
"""Commands handled on a thread of their own (they wait for the engine, or tokenize)."""


def main() -> int:
    die_with_parent()  # again, for a worker started another way than `python -m`
    out = os.fdopen(os.dup(1), "wb", buffering=0)
    os.dup2(2, 1)  # anything llama.cpp prints goes to stderr, never into the protocol
    sys.stdout = sys.stderr
    worker = Worker(out)
    worker.send(
        p.Hello(
            pid=os.getpid(),
            llama_cpp_version=llama_cpp.__version__,
            gpu_offload=worker.gpu_offload,
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
        elif isinstance(cmd, p.Tokenize):
            worker.tokenize(cmd)
        else:
            handler = _THREADED.get(type(cmd))
            if handler is not None:
                threading.Thread(target=handler, args=(worker, cmd), daemon=True).start()
    os._exit(0)  # skip interpreter teardown: llama.cpp frees nothing we still need
