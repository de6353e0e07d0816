"""Agents, their sessions, the messages of a transcript and the events of a streamed turn."""

from __future__ import annotations

import json
from typing import Any

import msgspec

from appliance.client.records.parse import as_dict, as_int, as_list, as_num, as_opt_str, as_str


class Agent(msgspec.Struct, frozen=True):
    id: str
    name: str
    model: str = ""
    description: str = ""
    tools: list[str] = msgspec.field(default_factory=list)

    @classmethod
    def from_json(cls, d: Any) -> Agent:
        d = as_dict(d)
        aid = as_str(d.get("id"), "?")
        return cls(
            id=aid,
            name=as_str(d.get("name"), aid),
            model=as_str(d.get("model")),
            description=as_str(d.get("description")),
            tools=[t for t in as_list(d.get("tools")) if isinstance(t, str)],
        )


class Session(msgspec.Struct, frozen=True):
    id: str
    agent_id: str | None = None
    title: str = ""
    model: str | None = None
    status: str = ""
    parent_id: str | None = None
    updated: float | None = None
    message_count: int = 0

    @classmethod
    def from_json(cls, d: Any) -> Session:
        d = as_dict(d)
        return cls(
            id=as_str(d.get("id"), "?"),
            agent_id=as_opt_str(d.get("agent_id", d.get("agent"))),
            title=as_str(d.get("title")),
            model=as_opt_str(d.get("model")),
            status=as_str(d.get("status", d.get("state"))),
            parent_id=as_opt_str(d.get("parent_id")),
            updated=as_num(d.get("updated")),
            message_count=as_int(d.get("message_count")),
        )

    @property
    def label(self) -> str:
        return self.title or self.id


class ToolCall(msgspec.Struct, frozen=True):
    id: str
    name: str
    arguments: str
    """The arguments as the model wrote them (JSON text, shown highlighted)."""

    @classmethod
    def from_json(cls, d: Any) -> ToolCall:
        d = as_dict(d)
        fn = as_dict(d.get("function")) or d
        args = fn.get("arguments", d.get("arguments", ""))
        if not isinstance(args, str):
            args = json.dumps(args, indent=2, ensure_ascii=False)
        return cls(
            id=as_str(d.get("id", d.get("call_id"))),
            name=as_str(fn.get("name", d.get("tool")), "?"),
            arguments=args,
        )


class TranscriptEntry(msgspec.Struct, frozen=True):
    """One message of a session: user, assistant (maybe with tool calls), tool (a result), system."""

    role: str
    content: str = ""
    tool_calls: list[ToolCall] = msgspec.field(default_factory=list)
    tool_call_id: str | None = None
    name: str | None = None

    @classmethod
    def from_json(cls, d: Any) -> TranscriptEntry:
        d = as_dict(d)
        content = d.get("content")
        if isinstance(content, list):  # OpenAI content parts
            content = "".join(as_str(as_dict(p).get("text")) for p in content)
        return cls(
            role=as_str(d.get("role"), "?"),
            content=content if isinstance(content, str) else "",
            tool_calls=[ToolCall.from_json(c) for c in as_list(d.get("tool_calls"))],
            tool_call_id=as_opt_str(d.get("tool_call_id")),
            name=as_opt_str(d.get("name")),
        )


class TurnEvent(msgspec.Struct, frozen=True):
    """One event of `POST /api/sessions/{id}/messages`: token, tool_call, tool_result, message,
    done or error. `text` is the token, the tool's output, a stored message's content or the error
    message; for a `message` event `data` is the stored message (role, tool_calls, ...)."""

    kind: str
    text: str = ""
    tool_call: ToolCall | None = None
    data: dict[str, Any] = msgspec.field(default_factory=dict)

    @classmethod
    def from_frame(cls, event: str | None, payload: Any) -> TurnEvent:
        d = as_dict(payload)
        kind = event or as_str(d.get("type", d.get("event")), "message")
        if kind == "token":
            text = as_str(d.get("text", d.get("content", d.get("token", d.get("delta")))))
        elif kind == "error":
            err = d.get("error")
            text = (
                as_str(as_dict(err).get("message"))
                or as_str(err)
                or as_str(d.get("message"), "error")
            )
        elif kind == "tool_result":
            value = d.get("result", d.get("content", d.get("output")))
            text = (
                value if isinstance(value, str) else json.dumps(value, indent=2, ensure_ascii=False)
            )
        elif kind == "message" and isinstance(d.get("message"), dict):
            d = d["message"]  # the stored message: user, assistant (maybe asking for tools) or tool
            text = as_str(d.get("content"))
        else:
            text = as_str(d.get("content", d.get("text")))
        call = None
        if kind == "tool_call":
            call = ToolCall.from_json(d.get("tool_call", d))
        return cls(kind=kind, text=text, tool_call=call, data=d)
