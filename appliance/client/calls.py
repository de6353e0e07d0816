"""The daemon's routes as calls: method, path, query, body and how to read the answer.

Both clients (`DaemonClient`, blocking, for the CLI; `ApplianceClient`, async, for the console)
send these, so each route is spelled once and its answer is parsed into the same typed record
(`appliance.client.records`) whichever client sent it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar
from urllib.parse import quote

from appliance.client.records import (
    Agent,
    DaemonStatus,
    GpuReport,
    Health,
    Language,
    ModelInfo,
    PullInfo,
    RunResult,
    Sandbox,
    Session,
    Trace,
    TranscriptEntry,
    UsageTotals,
)

T = TypeVar("T")


@dataclass(frozen=True)
class Call(Generic[T]):
    method: str
    path: str
    parse: Callable[[Any], T]
    params: dict[str, Any] | None = None
    body: Any = None
    slow: bool = False
    """The answer takes as long as the work (a model load, a sandbox run): no read timeout."""


def segment(value: str) -> str:
    """An id as one path segment."""
    return quote(value, safe="")


def items(payload: Any) -> list[Any]:
    """A listing, whether the daemon sends a bare list, a page (`items`) or OpenAI's `data`."""
    if isinstance(payload, list):
        return payload
    if isinstance(payload, dict):
        for key in ("items", "data", "sandboxes", "sessions", "agents", "traces", "languages"):
            if isinstance(payload.get(key), list):
                return list(payload[key])
    return []


def _none(_: Any) -> None:
    return None


def _listing(record: Callable[[Any], T]) -> Callable[[Any], list[T]]:
    return lambda payload: [record(x) for x in items(payload)]


def _transcript(payload: Any) -> list[TranscriptEntry]:
    messages = payload.get("messages") if isinstance(payload, dict) else payload
    return [TranscriptEntry.from_json(m) for m in items(messages) if isinstance(m, dict)]


# --- the daemon -------------------------------------------------------------------------------


def health() -> Call[Health]:
    return Call("GET", "/api/health", Health.from_json)


def status() -> Call[DaemonStatus]:
    return Call("GET", "/api/status", DaemonStatus.from_json)


def gpu() -> Call[GpuReport]:
    return Call("GET", "/api/gpu", GpuReport.from_json)


def usage() -> Call[UsageTotals]:
    return Call("GET", "/api/usage", UsageTotals.from_json)


# --- models -----------------------------------------------------------------------------------


def models() -> Call[list[ModelInfo]]:
    return Call("GET", "/api/models", _listing(ModelInfo.from_json))


def model(model_id: str) -> Call[ModelInfo]:
    return Call("GET", f"/api/models/{segment(model_id)}", ModelInfo.from_json)


def load_model(model_id: str) -> Call[ModelInfo]:
    return Call("POST", f"/api/models/{segment(model_id)}/load", ModelInfo.from_json, slow=True)


def unload_model(model_id: str) -> Call[ModelInfo]:
    return Call("POST", f"/api/models/{segment(model_id)}/unload", ModelInfo.from_json, slow=True)


def pin_model(model_id: str, pinned: bool) -> Call[ModelInfo]:
    return Call(
        "POST",
        f"/api/models/{segment(model_id)}/pin",
        ModelInfo.from_json,
        params={"pinned": str(pinned).lower()},
    )


def add_model(path: str, model_id: str | None = None, kind: str = "chat") -> Call[ModelInfo]:
    body: dict[str, Any] = {"path": path, "kind": kind}
    if model_id:
        body["id"] = model_id
    return Call("POST", "/api/models", ModelInfo.from_json, body=body)


def pull_model(
    source: str, model_id: str | None = None, sha256: str | None = None
) -> Call[PullInfo]:
    body: dict[str, Any] = {"source": source}
    if model_id:
        body["id"] = model_id
    if sha256:
        body["sha256"] = sha256
    return Call("POST", "/api/models/pull", PullInfo.from_json, body=body, slow=True)


def pulls() -> Call[list[PullInfo]]:
    return Call("GET", "/api/models/pulls", _listing(PullInfo.from_json))


def pull(pull_id: str) -> Call[PullInfo]:
    return Call("GET", f"/api/models/pulls/{segment(pull_id)}", PullInfo.from_json)


def cancel_pull(pull_id: str) -> Call[PullInfo]:
    return Call("DELETE", f"/api/models/pulls/{segment(pull_id)}", PullInfo.from_json)


def remove_model(model_id: str, files: bool = False) -> Call[dict[str, Any]]:
    return Call(
        "DELETE",
        f"/api/models/{segment(model_id)}",
        lambda d: dict(d or {}),
        params={"files": str(files).lower()},
        slow=True,
    )


def import_models(origin: str, path: str | None = None) -> Call[dict[str, Any]]:
    body: dict[str, Any] = {"from": origin}
    if path:
        body["path"] = path
    return Call("POST", "/api/models/import", lambda d: dict(d or {}), body=body, slow=True)


# --- agents and sessions ----------------------------------------------------------------------


def agents() -> Call[list[Agent]]:
    return Call("GET", "/api/agents", _listing(Agent.from_json))


def sessions(agent: str | None = None, *, limit: int = 200) -> Call[list[Session]]:
    params: dict[str, Any] = {"limit": limit}
    if agent:
        params["agent"] = agent
    return Call("GET", "/api/sessions", _listing(Session.from_json), params=params)


def create_session(
    *, agent: str | None = None, model: str | None = None, title: str | None = None
) -> Call[Session]:
    """A session with an agent (name or id), or with a bare model."""
    body = {k: v for k, v in (("agent", agent), ("model", model), ("title", title)) if v}
    return Call("POST", "/api/sessions", Session.from_json, body=body)


def transcript(session_id: str) -> Call[list[TranscriptEntry]]:
    """The session's messages, oldest first (from `GET /api/sessions/{id}`)."""
    return Call("GET", f"/api/sessions/{segment(session_id)}", _transcript)


def fork_session(session_id: str) -> Call[Session]:
    return Call("POST", f"/api/sessions/{segment(session_id)}/fork", Session.from_json, body={})


def delete_session(session_id: str) -> Call[None]:
    return Call("DELETE", f"/api/sessions/{segment(session_id)}", _none)


# --- sandboxes --------------------------------------------------------------------------------


def sandboxes() -> Call[list[Sandbox]]:
    return Call("GET", "/api/sandboxes", _listing(Sandbox.from_json))


def languages() -> Call[list[Language]]:
    return Call("GET", "/api/sandboxes/languages", _listing(Language.from_json))


def create_sandbox(language: str) -> Call[Sandbox]:
    return Call("POST", "/api/sandboxes", Sandbox.from_json, body={"language": language})


def exec_in_sandbox(sandbox_id: str, code: str, stdin: str | None = None) -> Call[RunResult]:
    body: dict[str, Any] = {"code": code}
    if stdin:
        body["stdin"] = stdin
    return Call(
        "POST",
        f"/api/sandboxes/{segment(sandbox_id)}/exec",
        RunResult.from_json,
        body=body,
        slow=True,
    )


def run(language: str, code: str, stdin: str | None = None) -> Call[RunResult]:
    """A one-shot run in a fresh sandbox (`POST /api/run`)."""
    body: dict[str, Any] = {"language": language, "code": code}
    if stdin:
        body["stdin"] = stdin
    return Call("POST", "/api/run", RunResult.from_json, body=body, slow=True)


def destroy_sandbox(sandbox_id: str) -> Call[None]:
    return Call("DELETE", f"/api/sandboxes/{segment(sandbox_id)}", _none)


# --- traces -----------------------------------------------------------------------------------


def traces(
    *, model: str | None = None, session_id: str | None = None, limit: int = 100
) -> Call[list[Trace]]:
    params: dict[str, Any] = {"limit": limit}
    if model:
        params["model"] = model
    if session_id:
        params["session_id"] = session_id
    return Call("GET", "/api/traces", _listing(Trace.from_json), params=params)


def trace(trace_id: str) -> Call[Trace]:
    return Call("GET", f"/api/traces/{segment(trace_id)}", Trace.from_json)


# --- streams: the body of each, the events read by appliance.client.sse -----------------------


def chat_body(
    model: str, messages: list[dict[str, Any]], max_tokens: int | None = None
) -> dict[str, Any]:
    body: dict[str, Any] = {"model": model, "messages": messages, "stream": True}
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    return body


def turn_path(session_id: str) -> str:
    return f"/api/sessions/{segment(session_id)}/messages"


def turn_body(content: str, max_tokens: int | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"content": content}
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    return body


# --- images -------------------------------------------------------------------------------------


def image_path(ref: str) -> str:
    """`/api/images/<ref>`: a reference keeps its slashes and colons (the route takes a path)."""
    return "/api/images/" + quote(ref, safe="/:@")


def images() -> Call[list[Any]]:
    return Call("GET", "/api/images", items)


def image(ref: str) -> Call[Any]:
    return Call("GET", image_path(ref), _json_value)


def pull_image(ref: str) -> Call[Any]:
    return Call("POST", "/api/images/pull", _json_value, body={"ref": ref})


def image_pulls() -> Call[list[Any]]:
    return Call("GET", "/api/images/pulls", items)


def remove_image(ref: str) -> Call[Any]:
    return Call("DELETE", image_path(ref), _json_value)


def prune_images() -> Call[Any]:
    return Call("POST", "/api/images/prune", _json_value, slow=True)


def _json_value(payload: Any) -> Any:
    return payload
