"""ResponseService: OpenAI's stateful Responses API (`POST /v1/responses`) on the session store.

A stored response (`store`, the default) is a turn of a bare-model session: the request's input
items are appended to the transcript, the model answers through the same path as agent turns
(appliance.sessions.model_call: context window, overflow marker, KV reuse with the session id
as slot key), the answer is appended, and a response id is linked to that range of messages.
`previous_response_id` finds the session and the point to continue from: when it is the session's
newest response the new turn goes on in the same session (its KV state is still in the slot or
parked), otherwise, because a client branches from an older response, the session is forked at
that point first. `instructions` are the system message of this call only, as in OpenAI's API.

`stream: true` sends the same work as OpenAI's typed server-sent events (`response.created`,
`response.output_item.added`, `response.output_text.delta`, ... `response.completed`); the ids it
shows while streaming are the ones stored, so `GET /v1/responses/{id}` returns the same items.
`store: false` answers without writing anything (the response cannot be continued or fetched).
Function tools work as in OpenAI's API: the model's calls come back as `function_call` output items,
and the client sends `function_call_output` items in its next request.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import msgspec

from appliance.errors import InvalidRequest, NotFound
from appliance.models import chat_format as cf
from appliance.models.catalog import ModelCatalog
from appliance.models.worker import protocol as p
from appliance.openai.chat import ChatService, bounded
from appliance.sessions.context import model_messages, visible, window_start
from appliance.sessions.parking import KvParking
from appliance.sessions.service import SessionService
from appliance.store import Message, MessageDraft, Store
from appliance.store.messages import Role
from appliance.telemetry.tracing import current_trace

SAMPLING = {
    "temperature": "temperature",
    "top_p": "top_p",
    "max_output_tokens": "max_tokens",
    "seed": "seed",
}


def _text(content: Any, where: str) -> str:
    try:
        return cf.content_text(content)
    except InvalidRequest as exc:
        raise InvalidRequest(f"{where}: {exc.message}", param=where) from None


def input_drafts(value: Any) -> list[MessageDraft]:
    """The transcript messages of a request's `input` (a string or a list of items)."""
    if isinstance(value, str):
        if not value:
            raise InvalidRequest("input must not be empty", param="input")
        return [MessageDraft(role="user", content=value)]
    if not isinstance(value, list) or not value:
        raise InvalidRequest("input must be a string or a non-empty list of items", param="input")
    drafts: list[MessageDraft] = []
    for i, item in enumerate(value):
        if not isinstance(item, dict):
            raise InvalidRequest(f"input[{i}] must be an object", param=f"input[{i}]")
        kind = item.get("type") or ("message" if "role" in item else None)
        if kind == "message":
            roles: dict[Any, Role] = {
                "user": "user",
                "assistant": "assistant",
                "system": "system",
                "developer": "system",
            }
            role = roles.get(item["role"]) if isinstance(item.get("role"), str) else None
            if role is None:
                raise InvalidRequest(
                    f"input[{i}].role must be user, assistant, system or developer",
                    param=f"input[{i}].role",
                )
            drafts.append(
                MessageDraft(role=role, content=_text(item.get("content"), f"input[{i}].content"))
            )
        elif kind == "function_call_output":
            if not item.get("call_id"):
                raise InvalidRequest(
                    f"input[{i}] needs the call_id of the function_call it answers",
                    param=f"input[{i}].call_id",
                )
            out = item.get("output")
            drafts.append(
                MessageDraft(
                    role="tool",
                    tool_call_id=str(item["call_id"]),
                    content=out if isinstance(out, str) else _text(out, f"input[{i}].output"),
                )
            )
        elif kind == "function_call":
            name, arguments = item.get("name"), item.get("arguments")
            if not isinstance(name, str) or not name:
                raise InvalidRequest(
                    f"input[{i}].name must be the name of the function called",
                    param=f"input[{i}].name",
                )
            if arguments is not None and not isinstance(arguments, str):
                raise InvalidRequest(
                    f"input[{i}].arguments must be the arguments as a JSON text",
                    param=f"input[{i}].arguments",
                )
            call = {
                "id": str(item.get("call_id") or cf.new_call_id()),
                "type": "function",
                "function": {"name": name, "arguments": arguments or "{}"},
            }
            last = drafts[-1] if drafts else None
            if (
                last is not None
                and last.role == "assistant"
                and last.content is None
                and last.tool_calls
            ):
                last.tool_calls.append(call)
            else:
                drafts.append(MessageDraft(role="assistant", tool_calls=[call]))
        else:
            raise InvalidRequest(
                f"input[{i}] of type {kind!r} is not supported; send message, function_call "
                "or function_call_output items",
                param=f"input[{i}].type",
            )
    return drafts


def chat_tools(tools: Any) -> list[dict[str, Any]] | None:
    if not tools:
        return None
    if not isinstance(tools, list):
        raise InvalidRequest("tools must be a list", param="tools")
    out = []
    for i, t in enumerate(tools):
        if not isinstance(t, dict) or t.get("type") != "function" or not t.get("name"):
            kind = t.get("type") if isinstance(t, dict) else type(t).__name__
            raise InvalidRequest(
                f"tools[{i}] of type {kind!r} is not supported; only function tools "
                "({type: function, name, parameters}) are",
                param=f"tools[{i}]",
            )
        for key, kind, what in (
            ("name", str, "a string"),
            ("description", str, "a string"),
            ("parameters", dict, "a JSON schema object"),
        ):
            if t.get(key) is not None and not isinstance(t[key], kind):
                raise InvalidRequest(f"tools[{i}].{key} must be {what}", param=f"tools[{i}].{key}")
        out.append(
            {
                "type": "function",
                "function": {
                    "name": t["name"],
                    "description": t.get("description") or "",
                    "parameters": t.get("parameters") or {"type": "object", "properties": {}},
                },
            }
        )
    return out


def chat_response_format(text: Any) -> dict[str, Any] | None:
    """The Responses API's `text.format` as chat's response_format (None: plain text)."""
    if text is None:
        return None
    fmt = text.get("format") if isinstance(text, dict) else None
    if fmt is None and isinstance(text, dict):
        return None
    if not isinstance(fmt, dict):
        raise InvalidRequest(
            'text must be an object like {"format": {"type": "json_schema", ...}}', param="text"
        )
    kind = fmt.get("type")
    if kind in ("text", "json_object"):
        return {"type": kind}
    if kind == "json_schema":
        if not isinstance(fmt.get("schema"), dict):
            raise InvalidRequest(
                "text.format.schema must be a JSON schema object", param="text.format.schema"
            )
        return {
            "type": "json_schema",
            "json_schema": {"name": fmt.get("name"), "schema": fmt["schema"]},
        }
    raise InvalidRequest(
        f"text.format type {kind!r} is not supported; use text, json_object or json_schema",
        param="text.format.type",
    )


def chat_tool_choice(choice: Any) -> Any:
    if isinstance(choice, dict) and choice.get("type") == "function":
        return {"type": "function", "function": {"name": choice.get("name")}}
    return choice


def output_items(messages: list[Message]) -> list[dict[str, Any]]:
    """The output items of a response: its assistant messages and function calls."""
    items: list[dict[str, Any]] = []
    for m in messages:
        if m.role != "assistant":
            continue
        for c in m.tool_calls or []:
            items.append(
                {
                    "type": "function_call",
                    "id": "fc_" + c["id"].removeprefix("call_"),
                    "call_id": c["id"],
                    "name": c["function"]["name"],
                    "arguments": c["function"]["arguments"],
                    "status": "completed",
                }
            )
        if m.content is not None:
            items.append(
                {
                    "type": "message",
                    "id": m.id,
                    "role": "assistant",
                    "status": "completed",
                    "content": [
                        {
                            "type": "output_text",
                            "text": m.content,
                            "annotations": [],
                            "logprobs": [],
                        }
                    ],
                }
            )
    return items


def response_object(
    rid: str,
    *,
    created: float,
    model: str,
    body: dict[str, Any],
    output: list[dict[str, Any]],
    usage: p.Usage,
    finish_reason: str,
    stored: bool,
    timings: dict[str, Any] | None = None,
    previous: str | None = None,
) -> dict[str, Any]:
    prompt, completion = usage.prompt_tokens, usage.completion_tokens
    return {
        "id": rid,
        "object": "response",
        "created_at": created,
        "completed_at": time.time(),
        "status": "incomplete" if finish_reason == "length" else "completed",
        "incomplete_details": {"reason": "max_output_tokens"}
        if finish_reason == "length"
        else None,
        "error": None,
        "model": model,
        "output": output,
        "instructions": body.get("instructions"),
        "previous_response_id": previous,
        "parallel_tool_calls": bool(body.get("parallel_tool_calls", True)),
        "tool_choice": body.get("tool_choice") or "auto",
        "tools": body.get("tools") or [],
        "temperature": body.get("temperature"),
        "top_p": body.get("top_p"),
        "max_output_tokens": body.get("max_output_tokens"),
        "metadata": body.get("metadata") or {},
        "store": stored,
        "text": {"format": (body.get("text") or {}).get("format") or {"type": "text"}},
        "truncation": "disabled",
        "usage": {
            "input_tokens": prompt,
            "output_tokens": completion,
            "total_tokens": prompt + completion,
            "input_tokens_details": {
                "cached_tokens": usage.cached_tokens,
                "cache_write_tokens": 0,
            },
            "output_tokens_details": {"reasoning_tokens": 0},
        },
        "timings": timings or {},
    }


OnDelta = Callable[[str], Awaitable[None]]
STREAM_WINDOW = 64
"""Text deltas a streamed response may run ahead of its client before the model waits."""


@dataclass
class _Request:
    """A checked `POST /v1/responses` body and the ids its answer will carry."""

    body: dict[str, Any]
    model: str
    drafts: list[MessageDraft]
    tools: list[dict[str, Any]] | None
    choice: Any
    link: Any
    previous: str | None
    response_id: str
    message_id: str
    created: float

    @property
    def stored(self) -> bool:
        return self.body.get("store", True) is not False


class ResponseService:
    def __init__(
        self,
        store: Store,
        catalog: ModelCatalog,
        chat: ChatService,
        sessions: SessionService,
        kv: KvParking,
    ) -> None:
        self.store = store
        self.catalog = catalog
        self.chat = chat
        self.sessions = sessions
        self.kv = kv
        """Marks a stored response's session active (the one writer of a session's status)."""

    def _params(self, body: dict[str, Any]) -> dict[str, Any]:
        params = {dst: body[src] for src, dst in SAMPLING.items() if body.get(src) is not None}
        fmt = chat_response_format(body.get("text"))
        if fmt is not None:
            params["response_format"] = fmt
        return params

    async def _check(self, body: dict[str, Any]) -> _Request:
        """Everything that can be refused before any work starts (a 4xx, never a broken stream)."""
        prev_id = body.get("previous_response_id")
        if prev_id is not None and not isinstance(prev_id, str):
            raise InvalidRequest(
                "previous_response_id must be the id of a stored response",
                param="previous_response_id",
            )
        link = await self.store.run(self.store.responses.get, prev_id) if prev_id else None
        model = body.get("model") or (link.model if link else None)
        if not isinstance(model, str) or not model:
            raise InvalidRequest(
                "`model` is required: the id of a model from GET /v1/models", param="model"
            )
        prof = self.catalog.get(model)
        if prof.kind != "chat":
            raise InvalidRequest(
                f"model {model!r} is an embedding model; use a chat model", param="model"
            )
        try:
            bounded(self._params(body), prof)
        except InvalidRequest as exc:
            raise InvalidRequest(
                exc.message.replace("max_tokens", "max_output_tokens"), param="max_output_tokens"
            ) from None
        drafts = input_drafts(body.get("input"))
        tools, choice = chat_tools(body.get("tools")), chat_tool_choice(body.get("tool_choice"))
        if tools:
            cf.select_tools(tools, choice)  # a bad tool_choice fails now, before anything is stored
        if (
            self.chat.grammars is not None
        ):  # a bad schema is refused here, before the input is stored
            await self.chat.grammars.for_chat(
                {
                    "tools": tools,
                    "tool_choice": choice,
                    "response_format": chat_response_format(body.get("text")),
                },
                tool_param="tools[{i}].parameters",
                format_param="text.format.schema",
            )
        return _Request(
            body=body,
            model=model,
            drafts=drafts,
            tools=tools,
            choice=choice,
            link=link,
            previous=prev_id or None,
            response_id="resp_" + uuid.uuid4().hex[:24],
            message_id="msg_" + uuid.uuid4().hex[:20],
            created=time.time(),
        )

    async def create(self, body: dict[str, Any]) -> dict[str, Any]:
        req = await self._check(body)
        return await (self._stored(req) if req.stored else self._unstored(req))

    async def stream(self, body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """Check the request now (errors become HTTP errors), then return its event stream."""
        req = await self._check(body)
        return self._events(req)

    async def _events(self, req: _Request) -> AsyncIterator[dict[str, Any]]:
        seq = itertools.count()
        deltas: asyncio.Queue[str] = asyncio.Queue(maxsize=STREAM_WINDOW)

        def event(kind: str, **fields: Any) -> dict[str, Any]:
            return {"type": kind, "sequence_number": next(seq), **fields}

        async def on_delta(text: str) -> None:
            await deltas.put(text)

        work = asyncio.create_task(
            self._stored(req, on_delta) if req.stored else self._unstored(req, on_delta)
        )
        pending = response_object(
            req.response_id,
            created=req.created,
            model=req.model,
            body=req.body,
            output=[],
            usage=p.Usage(),
            finish_reason="",
            stored=req.stored,
            previous=req.previous,
        )
        pending.update(status="in_progress", completed_at=None, incomplete_details=None)
        text_item = {
            "type": "message",
            "id": req.message_id,
            "role": "assistant",
            "status": "in_progress",
            "content": [],
        }

        def text_at(index: int) -> dict[str, Any]:
            return {"item_id": req.message_id, "output_index": index, "content_index": 0}

        def text_opened(index: int) -> list[dict[str, Any]]:
            return [
                event("response.output_item.added", output_index=index, item=text_item),
                event(
                    "response.content_part.added",
                    **text_at(index),
                    part={"type": "output_text", "text": "", "annotations": [], "logprobs": []},
                ),
            ]

        streamed = False
        try:
            yield event("response.created", response=pending)
            yield event("response.in_progress", response=pending)
            while True:
                if deltas.empty():
                    if work.done():
                        break
                    getter = asyncio.ensure_future(deltas.get())
                    await asyncio.wait({getter, work}, return_when=asyncio.FIRST_COMPLETED)
                    if not getter.done():
                        getter.cancel()
                        continue
                    piece = getter.result()
                else:
                    piece = deltas.get_nowait()
                if not streamed:
                    for opened in text_opened(0):
                        yield opened
                    streamed = True
                yield event("response.output_text.delta", **text_at(0), delta=piece, logprobs=[])
            final = work.result()  # an ApplianceError here ends the stream with OpenAI's error body
            for index, item in enumerate(final["output"]):
                if item["type"] == "message":
                    part = item["content"][0]
                    if (
                        not streamed
                    ):  # a tool-enabled call is parsed whole: its text arrives at the end
                        for opened in text_opened(index):
                            yield opened
                        if part["text"]:
                            yield event(
                                "response.output_text.delta",
                                **text_at(index),
                                delta=part["text"],
                                logprobs=[],
                            )
                    yield event(
                        "response.output_text.done",
                        **text_at(index),
                        text=part["text"],
                        logprobs=[],
                    )
                    yield event("response.content_part.done", **text_at(index), part=part)
                else:
                    call = {**item, "arguments": "", "status": "in_progress"}
                    yield event("response.output_item.added", output_index=index, item=call)
                    yield event(
                        "response.function_call_arguments.delta",
                        item_id=item["id"],
                        output_index=index,
                        delta=item["arguments"],
                    )
                    yield event(
                        "response.function_call_arguments.done",
                        item_id=item["id"],
                        output_index=index,
                        name=item["name"],
                        arguments=item["arguments"],
                    )
                yield event("response.output_item.done", output_index=index, item=item)
            kind = (
                "response.incomplete" if final["status"] == "incomplete" else "response.completed"
            )
            yield event(kind, response=final)
        finally:
            if not work.done():  # the client went away: stop the generation, store nothing more
                work.cancel()
                with contextlib.suppress(BaseException):
                    await work

    async def _stored(self, req: _Request, on_delta: OnDelta | None = None) -> dict[str, Any]:
        body, model, prev_id = req.body, req.model, req.previous
        if req.link is None or prev_id is None:
            session = await self.store.run(
                self.store.sessions.create, None, title="responses", model=model
            )
            session_id = session.id
            lock = await self.sessions.acquire(session_id)
        else:
            session_id, lock = await self._continue_from(
                req.link.session_id, req.link.last_seq, prev_id
            )
        current_trace().tag(kind="response", model=model, session_id=session_id)
        try:
            inputs = await self.store.run(self.store.messages.append_many, session_id, req.drafts)
            await self.kv.activate(session_id)
            call = await self.sessions.model.call(
                session_id,
                model,
                persona=body.get("instructions"),
                params=self._params(body),
                tools=req.tools,
                tool_choice=req.choice,
                on_delta=on_delta,
            )
            r = call.result
            meta = {
                "usage": msgspec.to_builtins(r.usage),
                "finish_reason": r.finish_reason,
                "timings": call.timings,
            }
            if r.tool_calls:
                answer = MessageDraft(
                    role="assistant", tool_calls=msgspec.to_builtins(r.tool_calls), meta=meta
                )
            else:
                answer = MessageDraft(
                    role="assistant", content=r.answer, meta=meta, id=req.message_id
                )
            (out,) = await self.store.run(self.store.messages.append_many, session_id, [answer])
            stored = await self.store.run(
                self.store.responses.record,
                session_id,
                first_seq=inputs[0].seq,
                last_seq=out.seq,
                previous_response_id=prev_id,
                model=model,
                response_id=req.response_id,
            )
        finally:
            lock.release()
        return response_object(
            stored.id,
            created=stored.created,
            model=model,
            body=body,
            output=output_items([out]),
            usage=r.usage,
            finish_reason=r.finish_reason,
            stored=True,
            timings=call.timings,
            previous=prev_id,
        )

    async def _continue_from(self, session_id: str, last_seq: int, prev_id: str) -> tuple[str, Any]:
        """The session (locked) a response continuing `prev_id` goes into: the same one when that
        response is its newest, else a fork at the response's last message."""
        lock = await self.sessions.acquire(session_id)
        try:
            session = await self.store.run(self.store.sessions.get, session_id)
            newest = await self.store.run(self.store.messages.last_seq, session_id)
            if session.last_response_id == prev_id and newest == last_seq:
                return session_id, lock
            (at,) = await self.store.run(
                self.store.messages.transcript,
                session_id,
                after_seq=last_seq - 1,
                upto_seq=last_seq,
            )
            fork = await self.store.run(
                self.store.sessions.fork, session_id, at_message=at.id, title="responses"
            )
        except BaseException:
            lock.release()
            raise
        lock.release()
        return fork.id, await self.sessions.acquire(fork.id)

    async def _unstored(self, req: _Request, on_delta: OnDelta | None = None) -> dict[str, Any]:
        body, link = req.body, req.link
        history: list[Message] = []
        if link is not None:
            transcript = await self.store.run(
                self.store.messages.transcript, link.session_id, upto_seq=link.last_seq
            )
            history = visible(transcript, window_start(transcript))
        messages = model_messages(body.get("instructions"), history)
        messages += [
            {
                k: v
                for k, v in (
                    ("role", d.role),
                    ("content", d.content),
                    ("tool_calls", d.tool_calls),
                    ("tool_call_id", d.tool_call_id),
                )
                if v is not None
            }
            for d in req.drafts
        ]
        params = {**self._params(body), "model": req.model, "messages": messages}
        if req.tools:
            params.update(tools=req.tools, tool_choice=req.choice or "auto")
        gen = await self.chat.generate("chat", params)
        r = await gen.result(on_delta)
        out = Message(
            id=req.message_id,
            session_id="",
            seq=0,
            role="assistant",
            content=None if r.tool_calls else r.answer,
            tool_calls=msgspec.to_builtins(r.tool_calls) if r.tool_calls else None,
            tool_call_id=None,
            name=None,
            created=req.created,
            tokens=None,
            meta={},
        )
        return response_object(
            req.response_id,
            created=req.created,
            model=req.model,
            body=body,
            output=output_items([out]),
            usage=r.usage,
            finish_reason=r.finish_reason,
            stored=False,
            timings=gen.extra(r),
            previous=link.id if link else None,
        )

    async def retrieve(self, response_id: str) -> dict[str, Any]:
        link = await self.store.run(self.store.responses.get, response_id)
        try:
            messages = await self.store.run(
                self.store.messages.transcript,
                link.session_id,
                after_seq=link.first_seq - 1,
                upto_seq=link.last_seq,
            )
        except NotFound:
            raise NotFound(
                f"response {response_id!r} belonged to a session that was deleted",
                param="response_id",
            ) from None
        answer = next((m for m in reversed(messages) if m.role == "assistant"), None)
        meta = answer.meta if answer else {}
        return response_object(
            link.id,
            created=link.created,
            model=link.model or "",
            body={},
            output=output_items([m for m in messages if m.role == "assistant"]),
            usage=msgspec.convert(meta.get("usage") or {}, p.Usage),
            finish_reason=str(meta.get("finish_reason")),
            stored=True,
            timings=meta.get("timings"),
            previous=link.previous_response_id,
        )
