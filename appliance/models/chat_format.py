"""Turning OpenAI chat requests into prompts and grammars, and model output back into messages.

The chat template comes from the GGUF (`tokenizer.chat_template`) or the profile, rendered in the
sandboxed Jinja environment llama-cpp-python's `Jinja2ChatFormatter` builds (itself aligned with
Transformers' chat templates): trim and lstrip blocks, the `loopcontrols` extension (`{% break %}`,
`{% continue %}`), a pass-through `{% generation %}` tag, Transformers' `tojson`, and the
`raise_exception` and `strftime_now` globals. It is built here rather than imported, since this
module runs in the daemon, which never imports llama_cpp. Tool calling works the same for every
model, even ones whose template knows nothing of tools: the tool list goes into the system prompt,
and the reply is constrained by a grammar built from the tool schemas to one JSON object, either
`{"tool_call": {"name": ..., "arguments": {...}}}` or `{"response": "..."}` (the response branch
only when tool_choice is "auto"). This is what lets a 135M-parameter model return calls that parse.

This module is pure logic (no llama_cpp import) so it can be unit tested on its own.
"""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import jinja2
import jinja2.ext
import jinja2.parser
from jinja2 import nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment

from appliance.errors import InvalidRequest
from appliance.models.worker.protocol import FunctionCall, ToolCall

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


class _GenerationTag(jinja2.ext.Extension):
    """Transformers' `{% generation %}...{% endgeneration %}` (it marks the assistant's tokens for
    training masks): rendered as its body, as llama-cpp-python's IgnoreGenerationTags does."""

    tags = {"generation"}

    def parse(self, parser: jinja2.parser.Parser) -> list[nodes.Node]:
        parser.stream.skip(1)
        body: list[nodes.Node] = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return body


_env = ImmutableSandboxedEnvironment(
    loader=jinja2.BaseLoader(),
    trim_blocks=True,
    lstrip_blocks=True,
    extensions=[_GenerationTag, jinja2.ext.loopcontrols],
)


def _raise(message: str) -> None:
    raise InvalidRequest(f"the chat template refused the messages: {message}")


def _tojson(
    value: Any,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    return json.dumps(
        value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


_env.globals["raise_exception"] = _raise
_env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
_env.filters["tojson"] = _tojson

_compiled: dict[str, jinja2.Template] = {}


def _template(source: str) -> jinja2.Template:
    tpl = _compiled.get(source)
    if tpl is None:
        try:
            tpl = _env.from_string(source)
        except jinja2.TemplateSyntaxError as exc:
            raise InvalidRequest(f"the model's chat template does not compile: {exc}") from exc
        _compiled[source] = tpl
    return tpl


def content_text(content: Any) -> str:
    """OpenAI content may be a string or a list of parts; only text parts are supported."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            if isinstance(part, Mapping) and part.get("type") in (
                "text",
                "input_text",
                "output_text",
            ):
                texts.append(str(part.get("text", "")))
            else:
                kind = part.get("type") if isinstance(part, Mapping) else type(part).__name__
                raise InvalidRequest(
                    f"message content part of type {kind!r} is not supported; send text parts only",
                    param="messages",
                )
        return "".join(texts)
    raise InvalidRequest(
        "message content must be a string or a list of text parts", param="messages"
    )


def tool_call_text(name: str, arguments: Any) -> str:
    """How an earlier tool call is shown to the model: the same JSON it is asked to produce."""
    if isinstance(arguments, str):
        with contextlib.suppress(ValueError):
            arguments = json.loads(arguments)
    return json.dumps({"tool_call": {"name": name, "arguments": arguments}}, ensure_ascii=False)


def tools_system_prompt(tools: Sequence[Mapping[str, Any]], required: bool) -> str:
    lines = ["You can call these tools:"]
    for t in tools:
        fn = t["function"]
        params = json.dumps(fn.get("parameters") or {"type": "object", "properties": {}})
        lines.append(
            f"- {fn['name']}: {fn.get('description', '')} Parameters (JSON schema): {params}"
        )
    lines.append(
        'To call a tool, reply with JSON only: {"tool_call": {"name": "<tool name>", "arguments": {...}}}.'
    )
    if not required:
        lines.append(
            'To answer without a tool, reply with JSON only: {"response": "<your answer>"}.'
        )
    return "\n".join(lines)


def normalise_messages(
    messages: Sequence[Mapping[str, Any]], tools_prompt: str | None
) -> list[dict[str, str]]:
    """Flatten OpenAI messages to role/content pairs every template can render."""
    if not messages:
        raise InvalidRequest("messages must not be empty", param="messages")
    out: list[dict[str, str]] = []
    for i, m in enumerate(messages):
        role = m.get("role")
        if role not in ("system", "developer", "user", "assistant", "tool", "function"):
            raise InvalidRequest(
                f"messages[{i}].role {role!r} is not a chat role", param="messages"
            )
        text = content_text(m.get("content"))
        if role == "developer":
            role = "system"
        if role == "assistant" and m.get("tool_calls"):
            calls = [
                tool_call_text(c["function"]["name"], c["function"].get("arguments", "{}"))
                for c in m["tool_calls"]
            ]
            text = (text + "\n" if text else "") + "\n".join(calls)
        if role in ("tool", "function"):
            name = m.get("name") or m.get("tool_call_id") or "tool"
            role = "tool"
            text = f"[result of {name}] {text}"
        out.append({"role": role, "content": text})
    if tools_prompt:
        if out[0]["role"] == "system":
            out[0] = {"role": "system", "content": out[0]["content"] + "\n\n" + tools_prompt}
        else:
            out.insert(0, {"role": "system", "content": tools_prompt})
    return out


def render_prompt(
    template: str | None,
    messages: list[dict[str, str]],
    *,
    bos_token: str = "",
    eos_token: str = "",
    add_generation_prompt: bool = True,
) -> str:
    tpl = _template(template or CHATML_TEMPLATE)
    try:
        return tpl.render(
            messages=messages,
            bos_token=bos_token,
            eos_token=eos_token,
            add_generation_prompt=add_generation_prompt,
        )
    except InvalidRequest:
        raise
    except jinja2.TemplateError as exc:
        raise InvalidRequest(f"the model's chat template failed on these messages: {exc}") from exc


def select_tools(
    tools: Sequence[Mapping[str, Any]] | None, tool_choice: Any
) -> tuple[list[Mapping[str, Any]], bool]:
    """The tools the model may call, and whether a call is required."""
    if not tools or tool_choice == "none":
        return [], False
    for i, t in enumerate(tools):
        if t.get("type", "function") != "function" or not isinstance(t.get("function"), Mapping):
            raise InvalidRequest(
                f"tools[{i}] must be {{'type': 'function', 'function': {{...}}}}", param="tools"
            )
        if not t["function"].get("name"):
            raise InvalidRequest(f"tools[{i}].function.name is missing", param="tools")
    if tool_choice in (None, "auto"):
        return list(tools), False
    if tool_choice == "required":
        return list(tools), True
    if isinstance(tool_choice, Mapping):
        name = (tool_choice.get("function") or {}).get("name") or tool_choice.get("name")
        chosen = [t for t in tools if t["function"]["name"] == name]
        if not chosen:
            raise InvalidRequest(
                f"tool_choice names {name!r}, which is not in tools", param="tool_choice"
            )
        return chosen, True
    raise InvalidRequest(
        "tool_choice must be 'none', 'auto', 'required' or a function", param="tool_choice"
    )


def tool_call_schema(tools: Sequence[Mapping[str, Any]], required: bool) -> dict[str, Any]:
    """JSON schema of the one object the model may reply with when tools are offered."""
    calls = []
    for t in tools:
        fn = t["function"]
        params = fn.get("parameters") or {"type": "object", "properties": {}}
        calls.append(
            {
                "type": "object",
                "properties": {"name": {"const": fn["name"]}, "arguments": params},
                "required": ["name", "arguments"],
            }
        )
    call = calls[0] if len(calls) == 1 else {"oneOf": calls}
    with_call = {"type": "object", "properties": {"tool_call": call}, "required": ["tool_call"]}
    if required:
        return with_call
    answer = {
        "type": "object",
        "properties": {"response": {"type": "string"}},
        "required": ["response"],
    }
    return {"oneOf": [with_call, answer]}


def response_format_schema(response_format: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The JSON schema a response_format asks for; {} means any JSON object."""
    if not response_format:
        return None
    kind = response_format.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "object"}
    if kind == "json_schema":
        spec = response_format.get("json_schema") or {}
        schema = spec.get("schema")
        if not isinstance(schema, Mapping):
            raise InvalidRequest(
                "response_format.json_schema.schema must be a JSON schema object",
                param="response_format",
            )
        return dict(schema)
    raise InvalidRequest(
        f"response_format type {kind!r} is not supported; use text, json_object or json_schema",
        param="response_format",
    )


def new_call_id() -> str:
    return "call_" + uuid.uuid4().hex[:24]


def parse_tool_reply(text: str) -> tuple[str | None, list[ToolCall]]:
    """Split the grammar-constrained reply into (content, tool_calls)."""
    try:
        obj = json.loads(text, strict=False)  # the grammar lets raw newlines into strings
    except ValueError:
        return text, []  # cut off by max_tokens: hand back what there is
    if isinstance(obj, dict) and isinstance(obj.get("tool_call"), dict):
        call = obj["tool_call"]
        return None, [
            ToolCall(
                id=new_call_id(),
                function=FunctionCall(
                    name=str(call.get("name", "")),
                    arguments=json.dumps(call.get("arguments", {}), ensure_ascii=False),
                ),
            )
        ]
    if isinstance(obj, dict) and "response" in obj:
        return str(obj["response"]), []
    return text, []
