"""One model call on behalf of a session: the context window, the KV plan, the generation.

Both the agent loop and `/v1/responses` talk to the model this way. The call builds what the model
sees from the stored transcript (appliance.sessions.context: persona, window, overflow
marker), asks `KvParking` for the session's parked state, starts the generation with the session
id as `slot_key` (so a hot session reuses its slot and only new tokens are evaluated), and tells
`KvParking` what happened to the slots. When the model still refuses the prompt as too long (the
counts are estimates of what the template adds), the window shrinks by one more turn and the
call is tried once more.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from appliance.errors import InvalidRequest
from appliance.models import chat_format as cf
from appliance.models.catalog import ModelCatalog
from appliance.models.scheduler import ModelScheduler
from appliance.models.worker import protocol as p
from appliance.openai.chat import ChatService
from appliance.sessions.context import (
    MARKER_KEY,
    MESSAGE_OVERHEAD,
    PROMPT_MARGIN,
    TokenCounter,
    fit_window,
    marker_text,
    message_text,
    model_messages,
    openai_message,
    reply_reserve,
    upper_bound,
    visible,
    window_start,
)
from appliance.sessions.parking import KvParking
from appliance.store import Message, Store
from appliance.telemetry.tracing import current_trace

OnDelta = Callable[[str], Awaitable[None]]
OnMarker = Callable[[Message], Awaitable[None]]


@dataclass
class CallResult:
    result: p.GenerateResult
    """The worker's result: the answer or tool calls, finish_reason, usage, timings."""
    timings: dict[str, Any] = field(default_factory=dict)
    """Worker timings plus queue/load and what the call did with parked KV state (`kv_*`)."""
    context_dropped: int = 0


def _tokenize_cmd(text: str, req_id: int) -> p.Tokenize:
    return p.Tokenize(id=req_id, text=text)


class SessionModel:
    def __init__(
        self,
        store: Store,
        chat: ChatService,
        scheduler: ModelScheduler,
        catalog: ModelCatalog,
        kv: KvParking,
    ) -> None:
        self.store = store
        self.chat = chat
        self.scheduler = scheduler
        self.catalog = catalog
        self.kv = kv
        self.counter = TokenCounter(self._tokenize)

    async def _tokenize(
        self, model_id: str, texts: Sequence[str], timings: dict[str, Any] | None = None
    ) -> list[int]:
        lease = await self.scheduler.acquire(model_id)
        if timings is not None and lease.load_ms is not None:
            timings["load_ms"] = (
                lease.load_ms
            )  # the model woke up for the count, not the generation
        try:
            out = []
            for text in texts:
                r = await lease.worker.call(partial(_tokenize_cmd, text), p.TokenizeResult)
                out.append(max(0, len(r.tokens) - 1))  # the worker adds a BOS
            return out
        finally:
            lease.release()

    async def window(
        self,
        session_id: str,
        model_id: str,
        persona: str | None,
        tools: list[dict[str, Any]] | None,
        tool_choice: Any,
        max_tokens: int | None,
        *,
        shrink: bool = False,
        timings: dict[str, Any] | None = None,
    ) -> tuple[list[dict[str, Any]], Message | None, int]:
        """The messages the model sees, the overflow marker stored for this call (if any) and how
        many messages it dropped. A model load caused by counting tokens goes into `timings`."""
        transcript = await self.store.run(self.store.messages.transcript, session_id)
        shown = visible(transcript, window_start(transcript))
        n_ctx = self.catalog.get(model_id).context_size
        offered, required = cf.select_tools(tools, tool_choice)
        head = (persona or "") + (
            "\n\n" + cf.tools_system_prompt(offered, required) if offered else ""
        )
        texts = [message_text(openai_message(m)) for m in shown]
        reserve = reply_reserve(n_ctx, max_tokens)
        bound = (
            sum(upper_bound(t) + MESSAGE_OVERHEAD for t in texts)
            + upper_bound(head)
            + MESSAGE_OVERHEAD
        )
        if not shrink and bound + PROMPT_MARGIN + reserve <= n_ctx:
            return model_messages(persona, shown), None, 0

        async def tokenize(model: str, batch: Sequence[str]) -> list[int]:
            return await self._tokenize(model, batch, timings)

        counts = await self.counter.count(model_id, [head, *texts], tokenize=tokenize)
        fixed = counts[0] + MESSAGE_OVERHEAD + PROMPT_MARGIN
        budget = n_ctx - reserve - fixed
        fit = fit_window(shown, [c + MESSAGE_OVERHEAD for c in counts[1:]], budget, shrink=shrink)
        if fit.dropped == 0:
            return model_messages(persona, shown), None, 0
        marker = await self.store.run(
            self.store.messages.append,
            session_id,
            "system",
            marker_text(fit.dropped, n_ctx),
            meta={
                MARKER_KEY: True,
                "context_dropped": fit.dropped,
                "context_start_seq": fit.start_seq,
            },
        )
        kept = [m for m in shown if m.seq >= fit.start_seq]
        return model_messages(persona, kept), marker, fit.dropped

    async def call(
        self,
        session_id: str,
        model_id: str,
        *,
        persona: str | None,
        params: dict[str, Any],
        tools: list[dict[str, Any]] | None = None,
        tool_choice: Any = None,
        on_delta: OnDelta | None = None,
        on_marker: OnMarker | None = None,
    ) -> CallResult:
        dropped = 0
        woke: dict[str, Any] = {}
        for attempt in range(2):
            messages, marker, n = await self.window(
                session_id,
                model_id,
                persona,
                tools,
                tool_choice,
                params.get("max_tokens"),
                shrink=attempt > 0,
                timings=woke,
            )
            dropped += n
            if marker is not None and on_marker is not None:
                await on_marker(marker)
            plan = await self.kv.plan(session_id, model_id)
            request = {**params, "model": model_id, "messages": messages}
            if tools:
                request["tools"] = tools
                request["tool_choice"] = tool_choice or "auto"
            try:
                gen = await self.chat.generate(
                    "chat", request, slot_key=session_id, slot=plan.fields()
                )
            except InvalidRequest as exc:
                if exc.code == "context_length_exceeded" and attempt == 0:
                    continue
                raise
            pid = gen.lease.worker.pid
            try:
                result = await gen.result(on_delta)
            except InvalidRequest as exc:
                if exc.code == "context_length_exceeded" and attempt == 0:
                    continue
                raise
            except asyncio.CancelledError:
                await self.kv.settle(session_id, model_id, plan, pid, None)  # the slot holds it now
                raise
            kv = await self.kv.settle(session_id, model_id, plan, pid, result)
            if kv.restored:
                current_trace().add_span(
                    "kv.restore",
                    start=gen.t0,
                    duration_s=(kv.restore_ms or 0.0) / 1000.0,
                    tokens=kv.restored_tokens,
                    bytes=kv.restore_bytes,
                )
            timings = {**gen.extra(result), **kv.timings()}
            if timings.get("load_ms") is None and "load_ms" in woke:
                timings["load_ms"] = woke["load_ms"]
            return CallResult(result=result, timings=timings, context_dropped=dropped)
        raise AssertionError("unreachable")  # pragma: no cover
