"""The agent loop: one turn of a session, from the user's message to the agent's answer.

A turn runs model -> tool calls -> tool runs -> model again, up to `max_steps` model calls (the
last one is offered no tools, so a turn always ends with a message). Every step is stored as it
happens: the assistant message that asks for tools, a `tool_runs` row per call (recorded
`running` before the tool starts), the tool message the model reads, the final answer. The user's
message was committed before the turn started, and its `message` event is the client's
acknowledgement.

The turn runs in its own task and reports `TurnEvent`s (token, tool_call, tool_result, message,
done, error) into a bounded queue the HTTP stream reads. The turn awaits each put, so a client that
reads slowly holds the generation back (through the worker's flow control) instead of piling its
tokens up in the daemon; a reader that takes nothing for `READER_STALL_S` counts as gone. A client
that goes away cancels the task; the
cancellation stops the generation in the worker and then settles the transcript: every tool call
already stored gets an answer ("cancelled") and its run is finished, so the next turn starts from a
well-formed conversation.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec

from appliance.errors import ApplianceError
from appliance.models.worker import protocol as p
from appliance.sessions.model_call import CallResult, SessionModel
from appliance.sessions.parking import KvParking
from appliance.sessions.tools import ToolBox, ToolCallError, ToolContext, ToolOutcome
from appliance.store import Agent, Message, Store
from appliance.store.messages import Role
from appliance.telemetry.recorder import Telemetry
from appliance.telemetry.tracing import current_trace, span

log = logging.getLogger("appliance.agents")

TURN_WINDOW = 64
"""Turn events queued for a reader that is behind; past it the turn waits for the reader."""
READER_STALL_S = 300.0
"""A reader that takes no event for this long is taken as gone: the turn is cancelled, so it
does not hold its session forever for a stream that was never read."""


@dataclass
class TurnEvent:
    event: str
    """token | tool_call | tool_result | message | done | error"""
    data: dict[str, Any]


def message_view(m: Message) -> dict[str, Any]:
    out: dict[str, Any] = msgspec.to_builtins(m)
    return out


def error_data(exc: ApplianceError) -> dict[str, Any]:
    return {
        "error": {"message": exc.message, "type": exc.type, "code": exc.code, "param": exc.param}
    }


@dataclass
class TurnSpec:
    """Everything a turn needs to know, resolved before it starts."""

    session_id: str
    model_id: str
    agent: Agent | None
    params: dict[str, Any]
    """Sampling parameters for every model call (agent's, then the request's overrides)."""
    tool_choice: Any = None
    """For the first step only; later steps use "auto"."""
    max_steps: int = 6


@dataclass
class _Totals:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    prefill_ms: float = 0.0
    decode_ms: float = 0.0
    context_dropped: int = 0
    first_step: dict[str, Any] = field(default_factory=dict)

    def add(self, call: CallResult) -> None:
        usage = call.result.usage
        self.prompt_tokens += usage.prompt_tokens
        self.completion_tokens += usage.completion_tokens
        self.cached_tokens += usage.cached_tokens
        self.prefill_ms += call.result.timings.prefill_ms
        self.decode_ms += call.result.timings.decode_ms
        self.context_dropped += call.context_dropped
        if not self.first_step:
            self.first_step = {
                **call.timings,
                "cached_tokens": usage.cached_tokens,
                "prompt_tokens": usage.prompt_tokens,
            }


class Turn:
    """A running turn: its events, in order, and a way to stop it."""

    def __init__(
        self,
        spec: TurnSpec,
        user_message: Message,
        *,
        window: int = TURN_WINDOW,
        stall_s: float = READER_STALL_S,
    ) -> None:
        self.spec = spec
        self.user_message = user_message
        self.queue: asyncio.Queue[TurnEvent | None] = asyncio.Queue(maxsize=window)
        self.task: asyncio.Task[None] | None = None
        self.error: ApplianceError | None = None
        """The error that ended the turn, if one did (also sent as the error event)."""
        self.stall_s = stall_s
        self._closed = False
        self._reader_gone = False
        self.queue.put_nowait(TurnEvent("message", {"message": message_view(user_message)}))

    async def emit(self, event: str, data: dict[str, Any]) -> None:
        """Queue an event, waiting while the reader is a whole window behind. Once the reader has
        gone the event is dropped; a reader stalled for `stall_s` cancels the turn."""
        if self._reader_gone:
            return
        try:
            async with asyncio.timeout(self.stall_s):
                await self.queue.put(TurnEvent(event, data))
        except TimeoutError:
            self._reader_gone = True
            raise asyncio.CancelledError(f"no event read for {self.stall_s:.0f} s") from None

    def close(self) -> None:
        """The turn has settled: the stream ends after the events already queued."""
        self._closed = True
        with contextlib.suppress(asyncio.QueueFull):  # full: the reader is not waiting on it
            self.queue.put_nowait(None)

    async def events(self) -> AsyncIterator[TurnEvent]:
        """The turn's events until done or error. Leaving early cancels the turn."""
        try:
            while not (self._closed and self.queue.empty()):
                ev = await self.queue.get()
                if ev is None:
                    return
                yield ev
        finally:
            self._reader_gone = True
            self.cancel()

    def cancel(self) -> None:
        if self.task is not None and not self.task.done():
            self.task.cancel()

    async def wait(self) -> None:
        if self.task is not None:
            await asyncio.wait([self.task])


class AgentLoop:
    def __init__(
        self,
        store: Store,
        model: SessionModel,
        tools: ToolBox,
        kv: KvParking,
        telemetry: Telemetry | None = None,
    ) -> None:
        self.store = store
        self.model = model
        self.tools = tools
        self.kv = kv
        self.telemetry = telemetry

    def start(self, turn: Turn, release: Callable[[], None]) -> None:
        """Run the turn in its own task; `release()` is called once it has settled (also when it
        is cancelled before it ever ran)."""
        sid = turn.spec.session_id
        self.kv.turn_started(sid)

        def finished(_: asyncio.Task[None]) -> None:
            self.kv.turn_ended(sid)
            release()
            turn.close()

        turn.task = asyncio.create_task(self._run(turn), name=f"turn-{sid}")
        turn.task.add_done_callback(finished)

    async def _run(self, turn: Turn) -> None:
        state = _TurnState(turn)
        agent = turn.spec.agent.name if turn.spec.agent else None
        current_trace().tag(
            kind="turn",
            name=f"turn of {agent or turn.spec.model_id}",
            model=turn.spec.model_id,
            session_id=turn.spec.session_id,
            agent=agent,
        )
        outcome = "error"
        try:
            await self._steps(turn, state)
            outcome = "ok"
        except asyncio.CancelledError:
            outcome = "cancelled"
            current_trace().fail("cancelled")
            await self._settle(state, "cancelled: the client went away")
        except ApplianceError as exc:
            await self._settle(state, f"error: {exc.message}")
            turn.error = exc
            await turn.emit("error", error_data(exc))
        except Exception as exc:  # a bug must end the turn with an error event, not a hung stream
            log.exception("turn of session %s failed", turn.spec.session_id)
            await self._settle(state, "error: internal error")
            turn.error = ApplianceError(f"internal error: {exc!r}. See the daemon log.")
            await turn.emit("error", error_data(turn.error))
        finally:
            if self.telemetry is not None:
                self.telemetry.turn_finished(outcome)

    async def _append(self, turn: Turn, role: Role, content: str | None, **kw: Any) -> Message:
        m = await self.store.run(
            self.store.messages.append, turn.spec.session_id, role, content, **kw
        )
        await turn.emit("message", {"message": message_view(m)})
        return m

    async def _steps(self, turn: Turn, state: _TurnState) -> None:
        spec = turn.spec
        agent = spec.agent
        tool_names, specs = await self.tools.offer(spec.session_id, agent)
        persona = agent.persona if agent and agent.persona else None
        totals = _Totals()
        t0 = time.perf_counter()
        first_token: list[float] = []

        async def on_delta(text: str) -> None:
            if not first_token:
                first_token.append((time.perf_counter() - t0) * 1000.0)
            await turn.emit("token", {"text": text})

        async def on_marker(m: Message) -> None:
            await turn.emit("message", {"message": message_view(m)})

        final: Message | None = None
        finish = "stop"
        for step in range(1, spec.max_steps + 1):
            choice = spec.tool_choice if step == 1 else "auto"
            offer = specs if specs and step < spec.max_steps and choice != "none" else None
            call = await self.model.call(
                spec.session_id,
                spec.model_id,
                persona=persona,
                params=spec.params,
                tools=offer,
                tool_choice=choice if offer else None,
                on_delta=on_delta,
                on_marker=on_marker,
            )
            totals.add(call)
            result = call.result
            meta = {
                "step": step,
                "usage": msgspec.to_builtins(result.usage),
                "finish_reason": result.finish_reason,
            }
            calls = result.tool_calls
            if calls:
                asked = await self._append(
                    turn, "assistant", None, tool_calls=msgspec.to_builtins(calls), meta=meta
                )
                state.pending = {c.id: (asked, c) for c in calls}
                for c in calls:
                    await self._run_tool(turn, state, tool_names, asked, c)
                continue
            if result.unstreamed:  # a tool-enabled step is parsed whole: hand its answer over now
                await on_delta(result.unstreamed)
            final = await self._append(
                turn,
                "assistant",
                result.answer,
                tokens=result.usage.completion_tokens,
                meta=meta,
            )
            finish = result.finish_reason or "stop"
            break
        await turn.emit(
            "done",
            {
                "message_id": final.id if final else None,
                "finish_reason": finish,
                "steps": step,
                "usage": {
                    "prompt_tokens": totals.prompt_tokens,
                    "completion_tokens": totals.completion_tokens,
                    "total_tokens": totals.prompt_tokens + totals.completion_tokens,
                    "cached_tokens": totals.cached_tokens,
                },
                "timings": {
                    **{k: v for k, v in totals.first_step.items() if k.startswith("kv_")},
                    "kv_restored": bool(totals.first_step.get("kv_restored")),
                    "cached_tokens": totals.first_step.get("cached_tokens", 0),
                    "prompt_tokens": totals.first_step.get("prompt_tokens", 0),
                    "queue_ms": totals.first_step.get("queue_ms"),
                    "load_ms": totals.first_step.get("load_ms"),
                    "first_token_ms": first_token[0] if first_token else None,
                    "prefill_ms": totals.prefill_ms,
                    "decode_ms": totals.decode_ms,
                    "total_ms": (time.perf_counter() - t0) * 1000.0,
                    "context_dropped": totals.context_dropped,
                },
            },
        )

    async def _run_tool(
        self,
        turn: Turn,
        state: _TurnState,
        allowed: list[str],
        asked: Message,
        call: p.ToolCall,
    ) -> None:
        spec = turn.spec
        fn = call.function
        await turn.emit(
            "tool_call",
            {
                "id": call.id,
                "name": fn.name,
                "arguments": fn.arguments,
                "message_id": asked.id,
            },
        )
        try:
            name, args = self.tools.check(allowed, msgspec.to_builtins(call), spec.session_id)
        except ToolCallError as exc:
            name, args, outcome = (
                fn.name,
                {},
                ToolOutcome(status="error", content=f"error: {exc}"),
            )
            run = await self.store.run(
                self.store.tool_runs.start,
                spec.session_id,
                name or "?",
                args,
                message_id=asked.id,
                call_id=call.id,
            )
        else:
            run = await self.store.run(
                self.store.tool_runs.start,
                spec.session_id,
                name,
                args,
                message_id=asked.id,
                call_id=call.id,
            )
            state.running = run.id
            ctx = ToolContext(
                session_id=spec.session_id,
                sandbox_language=spec.agent.sandbox if spec.agent else None,
                sandbox_image=spec.agent.sandbox_image if spec.agent else None,
            )
            with span("tool.run", tool=name) as timed:
                outcome = await self.tools.run(ctx, name, args)
                timed.set(status=outcome.status)
        state.running = None
        finished = await self.store.run(
            self.store.tool_runs.finish, run.id, outcome.status, outcome.content
        )
        await turn.emit(
            "tool_result",
            {
                "id": call.id,
                "name": name,
                "status": outcome.status,
                "content": outcome.content,
                "run_id": run.id,
                "duration_ms": finished.duration_ms,
                **outcome.detail,
            },
        )
        state.pending.pop(call.id, None)
        await self._append(
            turn,
            "tool",
            outcome.content,
            tool_call_id=call.id,
            name=name,
            meta={"status": outcome.status, "run_id": run.id},
        )

    async def _settle(self, state: _TurnState, why: str) -> None:
        """Answer the stored tool calls that have no result yet, so the transcript stays whole."""
        try:
            if state.running is not None:
                await self.store.run(self.store.tool_runs.finish, state.running, "cancelled", why)
            for call_id, (_, call) in list(state.pending.items()):
                await self.store.run(
                    self.store.messages.append,
                    state.turn.spec.session_id,
                    "tool",
                    f"({why})",
                    tool_call_id=call_id,
                    name=call.function.name,
                    meta={"status": "cancelled"},
                )
        except ApplianceError as exc:  # the session may have been deleted under the turn
            log.info("could not settle session %s: %s", state.turn.spec.session_id, exc.message)


@dataclass
class _TurnState:
    turn: Turn
    pending: dict[str, tuple[Message, p.ToolCall]] = field(default_factory=dict)
    """Stored tool calls still waiting for their result."""
    running: str | None = None
    """The tool run in progress."""
