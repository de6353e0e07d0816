"""Ollama's API on the appliance's models: its request shapes, and their translation.

Ollama's clients (the `ollama` Python and JS libraries, Open WebUI, Continue, editors) speak a
different dialect of the same calls the OpenAI routes serve: `/api/chat` and `/api/generate`
stream newline-delimited JSON by default, sampling settings sit in `options` under llama.cpp's
names (num_predict, num_ctx, repeat_penalty), `format` is "json" or a JSON schema, tool-call
arguments are objects rather than JSON text, and `keep_alive` is a Go duration ("5m") or seconds.

The bodies are typed here (msgspec structs, checked at the edge with the ranges of
appliance.sampling), and `OllamaService` turns each into the OpenAI-shaped parameters that
`ChatService` already serves, so a request takes the same path as an OpenAI one: the same
scheduler lease, the same grammar compiler for `format` and `tools` (a client's schema becomes a
grammar there and nowhere else), the same worker. Only the answers are reshaped.

What Ollama has and the appliance does not: images (no vision models), a per-request context
size (a model's context is set by its profile, when it loads; `num_ctx` up to it is accepted),
prompt templates and `context` token arrays (the model's own chat template is used), and the
model hub calls (pull, push, create, copy, delete), which are refused with 501 naming what to do
instead.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from appliance import __version__
from appliance.errors import ApplianceError, InvalidRequest
from appliance.models.catalog import ModelCatalog
from appliance.models.profile import ModelProfile
from appliance.models.scheduler import ModelScheduler
from appliance.models.worker import protocol as p
from appliance.openai.chat import ChatService, Generation
from appliance.openai.shapes import ChatTool
from appliance.sampling import (
    KEEP_ALIVE_MAX,
    MaxTokens,
    MinP,
    Penalty,
    RepeatPenalty,
    Seed,
    Temperature,
    TopK,
    TopP,
)

OLLAMA_API_VERSION = "0.9.0"
"""The Ollama release whose API these routes follow; clients that check `/api/version` compare
against Ollama's numbers, not the appliance's."""

FOREVER = "9999-12-31T23:59:59Z"
"""`expires_at` of a model that is never unloaded (pinned, or keep_alive -1)."""


class NotImplementedHere(ApplianceError):
    """An Ollama call the appliance does not serve; the message says what to use instead."""

    status = 501
    code = "not_implemented"


class _Body(msgspec.Struct, kw_only=True, omit_defaults=True):
    pass


# --- requests --------------------------------------------------------------------------------

NumPredict = Annotated[
    int, Meta(ge=-2, le=2**31 - 1, description="Tokens to generate; -1 or -2: up to the context")
]
OllamaStop = Annotated[list[str], Meta(max_length=32, description="Up to 32 stop strings")]
KeepAliveValue = str | float
"""A Go duration ("5m", "1h30m", "0", "-1m") or seconds (300, 0, -1: never unload)."""


class OllamaOptions(_Body):
    """`options`: the sampling settings the appliance honours. Ollama's load-time settings
    (num_gpu, num_thread, use_mmap, ...) are set by the model profile and ignored here."""

    num_ctx: MaxTokens | None = None
    """Accepted up to the model's context_size (its profile sets the context when it loads)."""
    num_predict: NumPredict | None = None
    temperature: Temperature | None = None
    top_k: TopK | None = None
    top_p: TopP | None = None
    min_p: MinP | None = None
    seed: Seed | None = None
    stop: OllamaStop | None = None
    repeat_penalty: RepeatPenalty | None = None
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None


class OllamaFunctionCall(_Body):
    name: str
    arguments: dict[str, Any] = {}


class OllamaToolCall(_Body):
    function: OllamaFunctionCall


class OllamaMessage(_Body):
    role: Literal["system", "user", "assistant", "tool"]
    content: str = ""
    images: list[str] | None = None
    """Base64 images: refused, the appliance serves text models only."""
    tool_calls: list[OllamaToolCall] | None = None
    tool_name: str | None = None
    """On a `tool` message: the tool whose result this is."""
    thinking: str | None = None


Format = Literal["", "json"] | dict[str, Any]


class _Generation(_Body):
    model: str
    format: Format | None = None
    """"json" for any JSON object, or a JSON schema the reply must match."""
    options: OllamaOptions | None = None
    stream: bool = True
    keep_alive: KeepAliveValue | None = None
    think: bool | str | None = None
    """Accepted and ignored: the shipped models do not think aloud."""


class OllamaChatRequest(_Generation):
    messages: list[OllamaMessage] = []
    """Empty: only load the model (or unload it, with keep_alive 0)."""
    tools: list[ChatTool] | None = None


class OllamaGenerateRequest(_Generation):
    prompt: str = ""
    """Empty: only load the model (or unload it, with keep_alive 0)."""
    system: str | None = None
    raw: bool = False
    """Send the prompt as it is, without the model's chat template."""
    suffix: str | None = None
    template: str | None = None
    context: list[int] | None = None
    images: list[str] | None = None


class OllamaEmbedRequest(_Body):
    model: str
    input: str | list[str]
    truncate: bool | None = None
    options: OllamaOptions | None = None
    keep_alive: KeepAliveValue | None = None
    dimensions: MaxTokens | None = None


class OllamaEmbeddingsRequest(_Body):
    model: str
    prompt: str = ""
    options: OllamaOptions | None = None
    keep_alive: KeepAliveValue | None = None


class OllamaModelRequest(_Body):
    """`/api/show` (and the hub calls): the model by `model`, or Ollama's older `name`."""

    model: str | None = None
    name: str | None = None

    def model_id(self) -> str:
        value = self.model or self.name
        if not value:
            raise InvalidRequest("`model` is required: a name from GET /api/tags", param="model")
        return model_id(value)


# --- translation -----------------------------------------------------------------------------

_DURATION = re.compile(r"([0-9]*\.?[0-9]+)(ns|us|µs|ms|s|m|h)")
_UNIT_S = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def keep_alive_seconds(value: KeepAliveValue | None) -> float | None:
    """Ollama's keep_alive as the scheduler's seconds: None (the model's default), 0 (unload
    when done), -1 (never unload; any negative duration, as in Ollama) or positive seconds."""
    if value is None:
        return None
    if isinstance(value, str):
        text = value.strip()
        sign = -1.0 if text.startswith("-") else 1.0
        body = text.lstrip("+-")
        try:
            seconds = float(body)  # a bare number is seconds
        except ValueError:
            parts = _DURATION.findall(body)
            if not body or "".join(n + u for n, u in parts) != body:
                raise InvalidRequest(
                    f"keep_alive {value!r} is not a duration; send seconds (300), or a duration "
                    'such as "5m", "1h30m" or "300s" (0 unloads after the request, -1 never)',
                    param="keep_alive",
                ) from None
            seconds = sum(float(n) * _UNIT_S[u] for n, u in parts)
        seconds *= sign
    else:
        seconds = float(value)
    if not math.isfinite(seconds):
        raise InvalidRequest("keep_alive must be a finite duration", param="keep_alive")
    if seconds < 0:
        return -1.0
    return min(seconds, KEEP_ALIVE_MAX)


def model_id(name: str) -> str:
    """An Ollama model name as a catalog id: Ollama's default tag (`:latest`) is dropped, and a
    name that is no valid id (`smol:135m`, `hf.co/org/repo:Q4_K_M`) is made one the way the hub
    names what `/api/pull` fetches (`smol-135m`), so the name finds the model it pulled."""
    from appliance.models.fetch.importers import model_id as clean
    from appliance.models.profile import ID_PATTERN

    bare = name.removesuffix(":latest")
    return bare if ID_PATTERN.match(bare) else clean(bare)


def _options(options: OllamaOptions | None, prof: ModelProfile) -> dict[str, Any]:
    """`options` under the names ChatService takes."""
    if options is None:
        return {}
    out: dict[str, Any] = {
        k: v
        for k, v in msgspec.structs.asdict(options).items()
        if v is not None and k not in ("num_ctx", "num_predict")
    }
    if options.num_ctx is not None and options.num_ctx > prof.context_size:
        raise InvalidRequest(
            f"options.num_ctx is {options.num_ctx}, but model {prof.id!r} runs with "
            f"{prof.context_size} tokens of context (set by context_size in its profile); ask "
            "for at most that, or raise context_size in the profile",
            param="options.num_ctx",
        )
    n = options.num_predict
    if n is not None:
        if n in (-1, -2):
            out["max_tokens"] = prof.context_size  # the worker cuts it to what the prompt leaves
        elif n == 0:
            raise InvalidRequest(
                "options.num_predict 0 generates nothing; ask for at least 1 token (-1: up to "
                "the context)",
                param="options.num_predict",
            )
        else:
            out["max_tokens"] = n
    return out


def _response_format(fmt: Format | None) -> dict[str, Any] | None:
    if fmt is None or fmt == "":
        return None
    if fmt == "json":
        return {"type": "json_object"}
    if isinstance(fmt, dict):
        return {"type": "json_schema", "json_schema": {"name": "format", "schema": fmt}}
    raise InvalidRequest(
        f'format {fmt!r} is not supported; send "json" or a JSON schema', param="format"
    )


def _no_images(images: list[str] | None, prof: ModelProfile, where: str) -> None:
    if images:
        raise InvalidRequest(
            f"model {prof.id!r} is a text model and cannot read images ({where}); send text "
            "only, or use a vision model (the appliance serves none yet)",
            param=where,
        )


def _chat_messages(messages: list[OllamaMessage], prof: ModelProfile) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for i, m in enumerate(messages):
        _no_images(m.images, prof, f"messages[{i}].images")
        msg: dict[str, Any] = {"role": m.role, "content": m.content}
        if m.role == "assistant" and m.tool_calls:
            msg["tool_calls"] = [
                {
                    "id": f"call_{i}_{j}",
                    "type": "function",
                    "function": {
                        "name": c.function.name,
                        "arguments": json.dumps(c.function.arguments),
                    },
                }
                for j, c in enumerate(m.tool_calls)
            ]
        if m.role == "tool":
            msg["tool_call_id"] = m.tool_name or "tool"
            if m.tool_name:
                msg["name"] = m.tool_name
        out.append(msg)
    return out


def _floats(vector: list[float] | str) -> list[float]:
    """An embedding as floats (the Ollama routes never ask for encoding_format "base64")."""
    if isinstance(vector, str):
        raise ApplianceError("an embedding came back base64-encoded where floats were asked for")
    return vector


def _ns(ms: float | None) -> int:
    return int((ms or 0.0) * 1e6)


def now_rfc3339() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def _rfc3339(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


def _done_reason(finish: str | None) -> str:
    return "stop" if finish in (None, "tool_calls") else finish


def _tool_calls(calls: list[p.ToolCall]) -> list[dict[str, Any]] | None:
    """The worker's OpenAI tool calls (arguments as JSON text) in Ollama's shape (an object)."""
    if not calls:
        return None
    out = []
    for c in calls:
        try:
            args = json.loads(c.function.arguments or "{}")
        except ValueError:
            args = {}
        out.append({"function": {"name": c.function.name, "arguments": args}})
    return out


_QUANT = re.compile(
    r"(?i)(?<![a-z0-9])(i?q[0-9]_[a-z0-9_]+|q[0-9]_[0-9k]|bf16|f16|f32)(?![a-z0-9])"
)


class OllamaService:
    """Ollama's calls over the appliance's catalog, scheduler and ChatService."""

    def __init__(self, chat: ChatService, catalog: ModelCatalog, scheduler: ModelScheduler) -> None:
        self.chat = chat
        self.catalog = catalog
        self.scheduler = scheduler

    # --- models ---------------------------------------------------------------------------

    def version(self) -> dict[str, Any]:
        return {"version": OLLAMA_API_VERSION, "appliance": __version__}

    def _file(self, prof: ModelProfile) -> tuple[int, float]:
        """(bytes, mtime) of the model's local file, or (0, 0) before it is fetched."""
        path = self.catalog.local_path(prof.id)
        if path is None:
            return 0, 0.0
        try:
            st = Path(path).stat()
        except OSError:
            return 0, 0.0
        return st.st_size, st.st_mtime

    def _entry(self, prof: ModelProfile) -> dict[str, Any]:
        size, mtime = self._file(prof)
        quant = _QUANT.search(prof.source)
        return {
            "name": prof.id,
            "model": prof.id,
            "modified_at": _rfc3339(mtime),
            "size": size,
            # an identity of this file (id, source, size, mtime), not a hash of its bytes: the
            # weights are not read to list them
            "digest": hashlib.sha256(
                f"{prof.id}\0{prof.source}\0{size}\0{mtime}".encode()
            ).hexdigest(),
            "details": {
                "parent_model": "",
                "format": "gguf",
                "family": "bert" if prof.convert == "bert" else "",
                "families": None,
                "parameter_size": "",
                "quantization_level": quant.group(1).upper() if quant else "",
            },
        }

    def tags(self) -> dict[str, Any]:
        return {"models": [self._entry(prof) for prof in self.catalog.all()]}

    def ps(self) -> dict[str, Any]:
        gpu = self.scheduler.memory.kind == "gpu"
        now = time.time()
        out = []
        for status in self.scheduler.snapshot():
            if status.state not in ("ready", "busy"):
                continue
            if status.idle_deadline is not None:
                expires = _rfc3339(status.idle_deadline)
            elif status.pinned or status.idle_ttl_s < 0:
                expires = FOREVER
            else:  # busy: the idle timer starts when its last request ends
                expires = _rfc3339(now + status.idle_ttl_s)
            entry = self._entry(self.catalog.get(status.id))
            entry.update(
                size=status.memory_bytes,
                size_vram=status.memory_bytes if gpu else 0,
                expires_at=expires,
                context_length=status.context_size,
            )
            entry.pop("modified_at")
            out.append(entry)
        return {"models": out}

    def show(self, req: OllamaModelRequest) -> dict[str, Any]:
        prof = self.catalog.get(req.model_id())
        entry = self._entry(prof)
        chat = prof.kind == "chat"
        return {
            "modelfile": f"# served by the Serverless AI Appliance\nFROM {prof.source}\n",
            "parameters": f"num_ctx {prof.context_size}\nnum_predict {prof.max_tokens}",
            "template": prof.chat_template or "",
            "details": entry["details"],
            "model_info": {
                "general.architecture": entry["details"]["family"] or prof.kind,
                "general.basename": prof.id,
                "appliance.context_length": prof.context_size,
                "appliance.parallel": prof.parallel,
            },
            "capabilities": ["completion", "tools"] if chat else ["embedding"],
            "modified_at": entry["modified_at"],
        }

    # --- chat and generate ----------------------------------------------------------------

    def _profile(self, name: str, kind: str, route: str) -> ModelProfile:
        prof = self.catalog.get(model_id(name))
        if prof.kind != kind:
            other = "/api/embed" if prof.kind == "embedding" else "/api/chat or /api/generate"
            raise InvalidRequest(
                f"model {prof.id!r} is a {prof.kind} model and cannot serve {route}; use it "
                f"with {other}",
                param="model",
            )
        return prof

    def chat_params(self, req: OllamaChatRequest) -> tuple[ModelProfile, dict[str, Any]]:
        """The profile and the OpenAI-shaped parameters of a chat request."""
        prof = self._profile(req.model, "chat", "/api/chat")
        params: dict[str, Any] = {
            "model": prof.id,
            "messages": _chat_messages(req.messages, prof),
            **_options(req.options, prof),
        }
        if req.tools:
            params["tools"] = [msgspec.to_builtins(t) for t in req.tools]
        fmt = _response_format(req.format)
        if fmt is not None:
            params["response_format"] = fmt
        return prof, self._keep_alive(params, req.keep_alive)

    def generate_params(
        self, req: OllamaGenerateRequest
    ) -> tuple[ModelProfile, str, dict[str, Any]]:
        """The profile, the ChatService op ("chat", or "completion" when raw) and the params."""
        prof = self._profile(req.model, "chat", "/api/generate")
        _no_images(req.images, prof, "images")
        for field, value, instead in (
            ("suffix", req.suffix, "send the whole prompt"),
            ("template", req.template, "set chat_template in the model's profile"),
            ("context", req.context, "send the conversation as messages to /api/chat"),
        ):
            if value:
                raise InvalidRequest(f"{field} is not supported here; {instead}", param=field)
        params: dict[str, Any] = {"model": prof.id, **_options(req.options, prof)}
        fmt = _response_format(req.format)
        if req.raw:
            if fmt is not None:
                raise InvalidRequest(
                    "format needs the model's chat template; send it without raw: true",
                    param="format",
                )
            params["prompt"] = req.prompt
            return prof, "completion", self._keep_alive(params, req.keep_alive)
        messages = [{"role": "system", "content": req.system}] if req.system else []
        params["messages"] = [*messages, {"role": "user", "content": req.prompt}]
        if fmt is not None:
            params["response_format"] = fmt
        return prof, "chat", self._keep_alive(params, req.keep_alive)

    @staticmethod
    def _keep_alive(params: dict[str, Any], value: KeepAliveValue | None) -> dict[str, Any]:
        seconds = keep_alive_seconds(value)
        if seconds is not None:
            params["keep_alive"] = seconds
        return params

    async def load_only(
        self, prof: ModelProfile, keep_alive: KeepAliveValue | None, reply: str
    ) -> dict[str, Any]:
        """A chat or generate call with nothing to say: Ollama's way to load a model, or with
        keep_alive 0 to unload it."""
        seconds = keep_alive_seconds(keep_alive)
        if seconds == 0:
            await self.scheduler.unload(prof.id)
            reason = "unload"
        else:
            await self.scheduler.load(prof.id, keep_alive=seconds)
            reason = "load"
        out: dict[str, Any] = {
            "model": prof.id,
            "created_at": now_rfc3339(),
            "done": True,
            "done_reason": reason,
        }
        if reply == "message":
            out["message"] = {"role": "assistant", "content": ""}
        else:
            out["response"] = ""
        return out

    async def start(self, op: str, params: dict[str, Any]) -> Generation:
        return await self.chat.generate(op, params)

    @staticmethod
    def _part(gen: Generation, reply: str, text: str) -> dict[str, Any]:
        out: dict[str, Any] = {"model": gen.model, "created_at": now_rfc3339()}
        if reply == "message":
            out["message"] = {"role": "assistant", "content": text}
        else:
            out["response"] = text
        out["done"] = False
        return out

    @staticmethod
    def _final(gen: Generation, reply: str, r: p.GenerateResult, text: str) -> dict[str, Any]:
        out = OllamaService._part(gen, reply, text)
        calls = _tool_calls(r.tool_calls)
        if calls and reply == "message":
            out["message"]["tool_calls"] = calls
        timings = gen.extra(r)
        out.update(
            done=True,
            done_reason=_done_reason(r.finish_reason),
            # the wait for a slot (a load included) came before the generation started
            total_duration=int((time.perf_counter() - gen.t0) * 1e9) + _ns(timings.get("queue_ms")),
            load_duration=_ns(timings.get("load_ms")),
            prompt_eval_count=r.usage.prompt_tokens,
            prompt_eval_duration=_ns(timings.get("prefill_ms")),
            eval_count=r.usage.completion_tokens,
            eval_duration=_ns(timings.get("decode_ms")),
        )
        return out

    async def answer(self, gen: Generation, reply: str) -> dict[str, Any]:
        """The whole reply as one object (`stream: false`); `reply` is "message" (chat) or
        "response" (generate)."""
        r = await gen.result()
        return self._final(gen, reply, r, "" if r.tool_calls else r.answer)

    async def parts(self, gen: Generation, reply: str) -> AsyncIterator[dict[str, Any]]:
        """The reply as Ollama's stream: a part per text delta, then the closing part."""
        async for ev in gen.events():
            if isinstance(ev, p.Delta):
                if ev.text:
                    yield self._part(gen, reply, ev.text)
                continue
            # with tools the worker parses the reply whole and sends no deltas: its text (when
            # the model chose not to call a tool) comes with the end
            yield self._final(gen, reply, ev, ev.unstreamed)

    # --- embeddings -----------------------------------------------------------------------

    async def embed(self, req: OllamaEmbedRequest) -> dict[str, Any]:
        prof = self._profile(req.model, "embedding", "/api/embed")
        t0 = time.perf_counter()
        params: dict[str, Any] = {"model": prof.id, "input": req.input}
        self._keep_alive(params, req.keep_alive)
        answer = await self.chat.embeddings(params)
        vectors = []
        for item in answer.data:
            vec = _floats(item.embedding)
            if req.dimensions:
                vec = vec[: req.dimensions]
            vectors.append(_unit(vec))  # Ollama's vectors are unit length, cut or not
        n = answer.usage.prompt_tokens
        return {
            "model": prof.id,
            "embeddings": vectors,
            "total_duration": int((time.perf_counter() - t0) * 1e9),
            "load_duration": 0,
            "prompt_eval_count": n,
        }

    async def embeddings(self, req: OllamaEmbeddingsRequest) -> dict[str, Any]:
        """The older single-prompt call: one vector (empty for an empty prompt, as in Ollama)."""
        prof = self._profile(req.model, "embedding", "/api/embeddings")
        if not req.prompt:
            return {"embedding": []}
        params: dict[str, Any] = {"model": prof.id, "input": req.prompt}
        self._keep_alive(params, req.keep_alive)
        answer = await self.chat.embeddings(params)
        return {"embedding": _floats(answer.data[0].embedding)}

    # --- the model hub --------------------------------------------------------------------

    @staticmethod
    def unsupported(call: str) -> NotImplementedHere:
        instead = {
            "pull": "pull with `appliance models pull SOURCE` (or POST /api/models/pull)",
            "push": "the appliance publishes no models",
            "create": "register a GGUF with POST /api/models, and set its chat template and "
            "parameters in its profile",
            "copy": "register the same file under another id with POST /api/models "
            '{"path": ..., "id": ...}',
            "delete": "remove it with `appliance models rm ID --files`",
        }[call]
        return NotImplementedHere(
            f"/api/{call} is not served by this appliance (its model hub is not built); {instead}"
        )


def _unit(vec: list[float]) -> list[float]:
    norm = math.sqrt(sum(x * x for x in vec))
    return [x / norm for x in vec] if norm > 0 else list(vec)
