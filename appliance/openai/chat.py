"""Chat, completion and embedding requests in OpenAI's shapes, served by the model scheduler.

Each request takes a lease from the scheduler before anything is sent to the client, so "no such
model", "queue full" and "does not fit" come back as HTTP errors, not as a broken stream. A
streaming request that the client abandons cancels its generation in the worker, and the lease is
released once the worker confirms, so the slot really is free for the next request.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import math
import struct
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import msgspec

from appliance.errors import ApplianceError, InvalidRequest
from appliance.models.catalog import ModelCatalog
from appliance.models.grammars import GrammarCompiler
from appliance.models.profile import ModelProfile
from appliance.models.scheduler import Lease, ModelScheduler
from appliance.models.worker import protocol as p
from appliance.models.worker.process import RequestStream, expect
from appliance.openai import shapes as s
from appliance.sampling import KEEP_ALIVE_MAX
from appliance.telemetry.recorder import Telemetry

log = logging.getLogger("appliance.chat")

CANCEL_GRACE_S = 30.0
FLOW_WINDOW = 64  # tokens a worker may generate ahead of the client reading them
_background: set[asyncio.Future[None]] = set()  # cancellations in flight, kept alive until done


def _keep_alive(value: Any) -> float | None:
    if value is None:
        return None
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise InvalidRequest(
            "keep_alive must be a number of seconds (0 unloads now, -1 never)", param="keep_alive"
        ) from None
    if not math.isfinite(v) or v > KEEP_ALIVE_MAX:
        raise InvalidRequest(
            f"keep_alive must be at most {KEEP_ALIVE_MAX:g} seconds (-1 never unloads)",
            param="keep_alive",
        )
    if v < 0 and v != -1:
        raise InvalidRequest(
            "keep_alive must be -1 (never unload), 0 (unload now) or positive", param="keep_alive"
        )
    return v


@dataclass(frozen=True)
class SlotFields:
    """The KV fields of a p.Generate: where a session's state the request displaces from its
    slot goes, and which parked state of the request's own session the worker may restore."""

    park_evicted_to: str | None = None
    restore_from: str | None = None
    restore_prefix_hash: str | None = None


class SlotKeeper(Protocol):
    """Who looks after sessions' KV state when a request without a session takes their slot
    (appliance.sessions.parking.KvParking, given to ChatService by the composition root)."""

    async def plain_fields(self, model_id: str) -> SlotFields | None:
        """The slot fields of a request without a session (where a displaced state goes); None
        while the model's file is not known."""
        ...

    async def plain_settled(
        self, model_id: str, fields: SlotFields, worker_pid: int, parked: list[p.ParkReport]
    ) -> None:
        """Index what such a request parked."""
        ...


class Generation:
    """A running generation: the lease, the worker stream and the metadata of the response."""

    def __init__(
        self,
        lease: Lease,
        stream: RequestStream,
        model: str,
        kind: str,
        telemetry: Telemetry | None = None,
        keeper: SlotKeeper | None = None,
        slot_fields: SlotFields | None = None,
    ) -> None:
        self.telemetry = telemetry
        self.keeper = keeper
        """Set for a request without a session: it indexes the states the request displaced."""
        self.slot_fields = slot_fields or SlotFields()
        self.lease = lease
        self.stream = stream
        self.model = model
        self.kind = kind
        self.id = ("chatcmpl-" if kind == "chat" else "cmpl-") + uuid.uuid4().hex[:24]
        self.created = int(time.time())
        self.t0 = time.perf_counter()
        self.first_token_ms: float | None = None
        self._finished = False

    async def events(self) -> AsyncIterator[p.Delta | p.GenerateResult]:
        """The text deltas, then the result."""
        result: p.GenerateResult | None = None
        outcome = "cancelled"
        try:
            async for ev in self.stream:
                if self.first_token_ms is None:
                    self.first_token_ms = (time.perf_counter() - self.t0) * 1000.0
                if isinstance(ev, p.Done):
                    result = expect(ev.result, p.GenerateResult)
                    if self.keeper is not None and result.parked:
                        self._settle_parked(result.parked)
                    yield result
                else:
                    yield ev
            self._finished, outcome = True, "ok"
        except ApplianceError:
            outcome = "error"
            raise
        finally:
            self.close_soon()
            if self.telemetry is not None:
                self.telemetry.generation_finished(self, result, outcome)

    def _settle_parked(self, parked: list[p.ParkReport]) -> None:
        """A request without a session displaced one: index its parked state in the background."""
        assert self.keeper is not None
        task = asyncio.ensure_future(
            self.keeper.plain_settled(self.model, self.slot_fields, self.lease.worker.pid, parked)
        )
        _background.add(task)
        task.add_done_callback(_background.discard)

    async def result(
        self, on_delta: Callable[[str], Awaitable[None]] | None = None
    ) -> p.GenerateResult:
        """Run the generation to its end and return the worker's result; each text delta goes to
        `on_delta` on the way, when given."""
        final: p.GenerateResult | None = None
        # run events() to its end (no early return): its `finally` releases the lease and
        # records the generation's telemetry, which a suspended generator would only do at GC
        async for ev in self.events():
            if isinstance(ev, p.GenerateResult):
                final = ev
            elif on_delta is not None:
                await on_delta(ev.text)
        if final is None:
            raise ApplianceError("the worker ended the generation without a result")
        return final

    def close_soon(self) -> None:
        """Release the lease now if the worker is done, else cancel and release when it agrees."""
        if self._finished or self.stream.finished.is_set():
            self.lease.release()
            return
        task = asyncio.ensure_future(self._cancel_then_release())
        _background.add(task)
        task.add_done_callback(_background.discard)

    async def _cancel_then_release(self) -> None:
        try:
            with contextlib.suppress(ApplianceError):
                await self.stream.cancel()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stream.finished.wait(), CANCEL_GRACE_S)
        finally:
            self.lease.release()

    def extra(self, result: p.GenerateResult) -> dict[str, Any]:
        """The reply's `timings`: the worker's, then the queue, the load and the first event."""
        timings: dict[str, Any] = msgspec.structs.asdict(result.timings)
        timings["queue_ms"] = self.lease.queue_ms
        if self.lease.load_ms is not None:
            timings["load_ms"] = self.lease.load_ms
        if self.first_token_ms is not None:
            timings["first_event_ms"] = self.first_token_ms
        return timings


class ChatService:
    def __init__(
        self,
        scheduler: ModelScheduler,
        catalog: ModelCatalog,
        telemetry: Telemetry | None = None,
        grammars: GrammarCompiler | None = None,
        slot_keeper: SlotKeeper | None = None,
    ) -> None:
        self.scheduler = scheduler
        self.grammars = grammars
        """Builds and proves the grammar of tools/response_format before a lease is taken."""
        self.catalog = catalog
        self.telemetry = telemetry
        self.slot_keeper = slot_keeper
        """Sessions' KV parking: their state survives a plain request taking their slot."""

    async def _start(
        self, model: Any, kind: str, make: Callable[[int], p.Command], keep_alive: Any
    ) -> tuple[Lease, RequestStream]:
        if not isinstance(model, str) or not model:
            raise InvalidRequest(
                "`model` is required: the id of a model from GET /v1/models", param="model"
            )
        prof = self.catalog.get(model)
        if prof.kind != kind:
            other = (
                "/v1/embeddings"
                if prof.kind == "embedding"
                else "/v1/chat/completions or /v1/completions"
            )
            raise InvalidRequest(
                f"model {model!r} is a {prof.kind} model; use it with {other}", param="model"
            )
        lease = await self.scheduler.acquire(model, keep_alive=_keep_alive(keep_alive))
        try:
            stream = await lease.worker.request(make)
        except BaseException:
            lease.release()
            raise
        return lease, stream

    async def generate(
        self,
        op: str,
        params: dict[str, Any],
        *,
        slot_key: str | None = None,
        slot: SlotFields | None = None,
    ) -> Generation:
        """Start a chat ("chat") or completion ("completion") generation.

        A session's call passes its id (`slot_key`) and its KV plan (`slot`); a request without
        either gets the slot keeper's fields, so a session it displaces is parked."""
        if params.get("n") not in (None, 1):
            raise InvalidRequest("only n=1 is supported", param="n")
        model = params.get("model")
        if isinstance(model, str) and model:
            params = bounded(params, self.catalog.get(model))
        worker_params = p.GenerateParams.from_request(params)
        grammar = (
            await self.grammars.for_chat(params)
            if self.grammars is not None and op == "chat"
            else None
        )
        keeper = self.slot_keeper if slot_key is None and slot is None else None
        if (
            keeper is not None
            and isinstance(model, str)
            and model
            and self.catalog.get(model).kind == "chat"
        ):
            slot = await keeper.plain_fields(model)
        fields = slot or SlotFields()
        lease, stream = await self._start(
            model,
            "chat",
            lambda i: p.Generate(
                id=i,
                op=op,
                params=worker_params,
                slot_key=slot_key,
                window=FLOW_WINDOW,
                grammar=grammar,
                park_evicted_to=fields.park_evicted_to,
                restore_from=fields.restore_from,
                restore_prefix_hash=fields.restore_prefix_hash,
            ),
            params.get("keep_alive"),
        )
        return Generation(
            lease,
            stream,
            str(model),
            "chat" if op == "chat" else "completion",
            self.telemetry,
            keeper if slot is not None else None,
            fields,
        )

    # --- OpenAI shapes ------------------------------------------------------------------------

    async def chat_completion(self, params: dict[str, Any]) -> s.ChatCompletion:
        gen = await self.generate("chat", params)
        r = await gen.result()
        message = s.AssistantReply(
            role="assistant",
            content=None if r.tool_calls else r.answer,
            tool_calls=[_tool_call(c) for c in r.tool_calls] if r.tool_calls else None,
        )
        return s.ChatCompletion(
            id=gen.id,
            object="chat.completion",
            created=gen.created,
            model=gen.model,
            choices=[
                s.ChatChoice(
                    index=0,
                    message=message,
                    finish_reason=r.finish_reason,
                    logprobs=chat_logprobs(r.logprobs),
                )
            ],
            usage=_usage(r.usage, s.Usage),
            timings=gen.extra(r),
        )

    async def chat_completion_stream(
        self, params: dict[str, Any]
    ) -> AsyncIterator[s.ChatCompletionChunk]:
        gen = await self.generate("chat", params)
        include_usage = bool((params.get("stream_options") or {}).get("include_usage"))
        return self._chat_chunks(gen, include_usage)

    async def _chat_chunks(
        self, gen: Generation, include_usage: bool
    ) -> AsyncIterator[s.ChatCompletionChunk]:
        def chunk(
            delta: s.ChatDelta | None,
            finish: str | None = None,
            lps: list[p.TokenLogprob] | None = None,
            **extra: Any,
        ) -> s.ChatCompletionChunk:
            choices = (
                []
                if delta is None
                else [
                    s.ChatChunkChoice(
                        index=0, delta=delta, finish_reason=finish, logprobs=chat_logprobs(lps)
                    )
                ]
            )
            return s.ChatCompletionChunk(
                id=gen.id,
                object="chat.completion.chunk",
                created=gen.created,
                model=gen.model,
                choices=choices,
                **extra,
            )

        yield chunk(s.ChatDelta(role="assistant", content=""))
        async for ev in gen.events():
            if isinstance(ev, p.Delta):
                yield chunk(s.ChatDelta(content=ev.text), lps=ev.logprobs)
                continue
            if ev.tool_calls:
                calls = [
                    s.IndexedToolCall(
                        index=i, id=c.id, type="function", function=_tool_call(c).function
                    )
                    for i, c in enumerate(ev.tool_calls)
                ]
                yield chunk(s.ChatDelta(tool_calls=calls))
            elif ev.unstreamed:
                yield chunk(s.ChatDelta(content=ev.unstreamed))
            yield chunk(s.ChatDelta(), ev.finish_reason, timings=gen.extra(ev))
            if include_usage:
                yield chunk(None, usage=_usage(ev.usage, s.StreamUsage))

    async def completion(self, params: dict[str, Any]) -> s.Completion:
        gen = await self.generate("completion", params)
        r = await gen.result()
        return s.Completion(
            id=gen.id,
            object="text_completion",
            created=gen.created,
            model=gen.model,
            choices=[
                s.CompletionChoice(
                    index=0,
                    text=r.answer,
                    finish_reason=r.finish_reason,
                    logprobs=completion_logprobs(r.logprobs),
                )
            ],
            usage=_usage(r.usage, s.Usage),
            timings=gen.extra(r),
        )

    async def completion_stream(self, params: dict[str, Any]) -> AsyncIterator[s.CompletionChunk]:
        gen = await self.generate("completion", params)
        include_usage = bool((params.get("stream_options") or {}).get("include_usage"))
        return self._completion_chunks(gen, include_usage)

    async def _completion_chunks(
        self, gen: Generation, include_usage: bool
    ) -> AsyncIterator[s.CompletionChunk]:
        offset = 0

        def chunk(
            text: str | None,
            finish: str | None = None,
            lps: list[p.TokenLogprob] | None = None,
            **extra: Any,
        ) -> s.CompletionChunk:
            choices = (
                []
                if text is None
                else [
                    s.CompletionChunkChoice(
                        index=0,
                        text=text,
                        finish_reason=finish,
                        logprobs=completion_logprobs(lps, offset),
                    )
                ]
            )
            return s.CompletionChunk(
                id=gen.id,
                object="text_completion",
                created=gen.created,
                model=gen.model,
                choices=choices,
                **extra,
            )

        async for ev in gen.events():
            if isinstance(ev, p.Delta):
                yield chunk(ev.text, lps=ev.logprobs)
                offset += len(ev.text)
            else:
                yield chunk("", ev.finish_reason)
                if include_usage:
                    yield chunk(None, usage=_usage(ev.usage, s.StreamUsage))

    async def embeddings(self, params: dict[str, Any]) -> s.EmbeddingList:
        inputs = params.get("input")
        if isinstance(inputs, str):
            inputs = [inputs]
        if (
            not isinstance(inputs, list)
            or not inputs
            or not all(isinstance(x, str) for x in inputs)
        ):
            raise InvalidRequest(
                "input must be a string or a non-empty list of strings (token arrays are not supported)",
                param="input",
            )
        if any(not x for x in inputs):
            raise InvalidRequest("input strings must not be empty", param="input")
        fmt = params.get("encoding_format") or "float"
        if fmt not in ("float", "base64"):
            raise InvalidRequest(
                "encoding_format must be 'float' or 'base64'", param="encoding_format"
            )
        model = params.get("model")
        lease, stream = await self._start(
            model,
            "embedding",
            lambda i: p.Embed(id=i, inputs=list(inputs)),
            params.get("keep_alive"),
        )
        t0 = time.perf_counter()
        try:
            r = await stream.result(p.EmbedResult)
        finally:
            lease.release()
        if self.telemetry is not None:
            self.telemetry.embedding_finished(str(model), lease, r, t0)
        if r.per_token:
            # as llama-server does: a model without pooling gives one vector per token
            raise InvalidRequest(
                f"model {model!r} gives one vector per token (its GGUF sets no pooling), not one "
                "per input as /v1/embeddings returns; use a sentence-embedding model",
                param="model",
            )
        data = []
        for i, vec in enumerate(r.embeddings):
            dims = params.get("dimensions")
            if dims:
                vec = vec[: int(dims)]
            emb: list[float] | str = vec
            if fmt == "base64":
                emb = base64.b64encode(struct.pack(f"<{len(vec)}f", *vec)).decode()
            data.append(s.Embedding(object="embedding", index=i, embedding=emb))
        n = r.prompt_tokens
        return s.EmbeddingList(
            object="list",
            data=data,
            model=str(model),
            usage=s.EmbeddingUsage(prompt_tokens=n, total_tokens=n),
        )


def bounded(params: dict[str, Any], prof: ModelProfile) -> dict[str, Any]:
    """`params` with the reply limit every generation has: the request's (`max_completion_tokens`
    before `max_tokens`), which must fit the model's context, or the profile's default.

    Checked before a lease is taken, so a limit no prompt could meet costs no model load. The
    worker still cuts the limit to what is left of the context after the prompt."""
    for key in ("max_completion_tokens", "max_tokens"):
        value = params.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InvalidRequest(f"{key} must be a whole number of tokens, at least 1", param=key)
        if value > prof.context_size:
            raise InvalidRequest(
                f"{key} is {value}, but model {prof.id!r} holds {prof.context_size} tokens of context "
                "(prompt and reply together); ask for fewer tokens",
                param=key,
            )
        return {**params, "max_tokens": value}
    return {**params, "max_tokens": prof.default_max_tokens}


U = TypeVar("U", s.Usage, s.StreamUsage)


def _usage(u: p.Usage, shape: type[U]) -> U:
    """The worker's token counts in OpenAI's shape (cached tokens as prompt_tokens_details)."""
    return shape(
        prompt_tokens=u.prompt_tokens,
        completion_tokens=u.completion_tokens,
        total_tokens=u.total_tokens,
        prompt_tokens_details=s.PromptTokensDetails(cached_tokens=u.cached_tokens)
        if u.cached_tokens
        else None,
    )


def chat_logprobs(lps: list[p.TokenLogprob] | None) -> s.ChatLogprobs | None:
    if lps is None:
        return None
    return s.ChatLogprobs(
        content=[
            s.ChatTokenLogprob(
                token=t.token,
                logprob=t.logprob,
                bytes=t.bytes,
                top_logprobs=[
                    s.TopLogprob(token=a.token, logprob=a.logprob, bytes=a.bytes) for a in t.top
                ],
            )
            for t in lps
        ]
    )


def completion_logprobs(
    lps: list[p.TokenLogprob] | None, offset: int = 0
) -> s.CompletionLogprobs | None:
    """The legacy shape; `offset` is where the first token's text starts in the reply."""
    if lps is None:
        return None
    offsets = []
    for t in lps:
        offsets.append(offset)
        offset += len(t.token)
    return s.CompletionLogprobs(
        tokens=[t.token for t in lps],
        token_logprobs=[t.logprob for t in lps],
        top_logprobs=[{a.token: a.logprob for a in t.top} for t in lps],
        text_offset=offsets,
    )


def _tool_call(c: p.ToolCall) -> s.ToolCall:
    return s.ToolCall(
        id=c.id,
        type="function",
        function=s.FunctionCall(name=c.function.name, arguments=c.function.arguments),
    )
