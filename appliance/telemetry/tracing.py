"""Traces: one per request or agent turn, with spans for the steps that took its time.

A trace is built in memory while the work runs and handed to a sink once, when it ends (the
Operations service queues it for the store, with retention). The trace of the running request is
kept in a context variable, so any code beneath a request adds to it without being passed
anything, and tasks started inside the request inherit it:

    from appliance.telemetry.tracing import current_trace, span

    with span("sandbox.run", language="python") as s:   # times the block, nests in open spans
        result = await run(...)
        s.set(status=result.status, exit_code=result.exit_code)

    current_trace().tag(kind="turn", session_id=sid, agent="coder")   # what this trace is about
    current_trace().add_span("prefill", start=t0, duration_s=0.12)   # a step measured elsewhere

Outside any trace, `current_trace()` is a `NullTrace` whose methods do nothing, so callers never
check. The HTTP middleware opens one trace per request; `Tracer.trace(kind, name)` opens one for
work that does not come through HTTP. Times are `time.perf_counter()` seconds while running and
milliseconds after the trace's start once stored.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import time
from collections.abc import Callable, Iterator
from contextvars import ContextVar, Token
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("appliance.tracing")

_open_span: ContextVar[tuple[str, str] | None] = ContextVar("appliance_open_span", default=None)
"""(trace id, span id) of the innermost open `span()` block in this context."""

TRACE_HEADER = "X-Trace-Id"


def new_trace_id() -> str:
    """`trc_` + 12 hex digits of milliseconds + 8 random hex digits, like the store's ids
    (made here so that telemetry does not import the store)."""
    return f"trc_{int(time.time() * 1000):012x}{os.urandom(4).hex()}"


@dataclass
class ActiveSpan:
    id: str
    name: str
    start: float
    """perf_counter seconds."""
    parent: str | None = None
    end: float | None = None
    attrs: dict[str, Any] = field(default_factory=dict)

    def set(self, **attrs: Any) -> None:
        """Add attributes (status, exit code, token counts...)."""
        self.attrs.update(attrs)


@dataclass
class ActiveTrace:
    """A trace being built. `finished` traces reject new spans (they are already stored)."""

    id: str
    kind: str
    name: str
    started: float
    """Unix seconds."""
    t0: float
    """perf_counter at the start."""
    status: str = "ok"
    attrs: dict[str, Any] = field(default_factory=dict)
    model: str | None = None
    session_id: str | None = None
    agent: str | None = None
    spans: list[ActiveSpan] = field(default_factory=list)
    keep: bool = True
    """Whether to store it; the HTTP middleware leaves quiet reads (health, status) out."""
    finished: bool = False
    duration_s: float = 0.0
    _ids: Iterator[int] = field(default_factory=lambda: itertools.count(1), repr=False)

    def _open_span(self) -> str | None:
        held = _open_span.get()
        return held[1] if held is not None and held[0] == self.id else None

    def tag(
        self,
        *,
        kind: str | None = None,
        name: str | None = None,
        model: str | None = None,
        session_id: str | None = None,
        agent: str | None = None,
        **attrs: Any,
    ) -> None:
        """Say what this trace is about; given values replace earlier ones."""
        if kind is not None:
            self.kind = kind
        if name is not None:
            self.name = name
        if model is not None:
            self.model = model
        if session_id is not None:
            self.session_id = session_id
        if agent is not None:
            self.agent = agent
        self.attrs.update(attrs)
        self.keep = True

    def fail(self, status: str = "error", **attrs: Any) -> None:
        """Mark the trace as failed ("error", "cancelled", "timeout"...)."""
        self.status = status
        self.attrs.update(attrs)

    def _new_span(
        self, name: str, start: float, parent: str | None, attrs: dict[str, Any]
    ) -> ActiveSpan:
        s = ActiveSpan(id=f"s{next(self._ids)}", name=name, start=start, parent=parent, attrs=attrs)
        if self.finished:
            log.debug("span %s added after trace %s was stored; dropped", name, self.id)
        else:
            self.spans.append(s)
            self.keep = True
        return s

    @contextlib.contextmanager
    def span(self, name: str, **attrs: Any) -> Iterator[ActiveSpan]:
        """Time a block as a span, nested in the span open around it (if any)."""
        s = self._new_span(name, time.perf_counter(), self._open_span(), attrs)
        token = _open_span.set((self.id, s.id))
        try:
            yield s
        except BaseException as exc:
            s.attrs.setdefault("error", f"{type(exc).__name__}: {exc}"[:500])
            raise
        finally:
            s.end = time.perf_counter()
            _open_span.reset(token)

    def add_span(
        self,
        name: str,
        *,
        start: float,
        duration_s: float,
        parent: ActiveSpan | str | None = None,
        **attrs: Any,
    ) -> ActiveSpan:
        """Record a step measured elsewhere (a worker's prefill time, a queue wait)."""
        parent_id = parent.id if isinstance(parent, ActiveSpan) else parent
        if parent_id is None:
            parent_id = self._open_span()
        s = self._new_span(name, start, parent_id, attrs)
        s.end = start + max(0.0, duration_s)
        return s


class NullTrace:
    """What `current_trace()` returns outside a trace: accepts everything, keeps nothing."""

    id: str | None = None
    kind: str | None = None
    model: str | None = None
    session_id: str | None = None
    agent: str | None = None

    def tag(self, **_: Any) -> None:
        return None

    def fail(self, status: str = "error", **_: Any) -> None:
        return None

    @contextlib.contextmanager
    def span(self, name: str, **attrs: Any) -> Iterator[ActiveSpan]:
        yield ActiveSpan(id="", name=name, start=time.perf_counter(), attrs=attrs)

    def add_span(self, name: str, *, start: float, duration_s: float, **attrs: Any) -> ActiveSpan:
        return ActiveSpan(id="", name=name, start=start, end=start + duration_s, attrs=attrs)


NULL_TRACE = NullTrace()
_current: ContextVar[ActiveTrace | None] = ContextVar("appliance_trace", default=None)


def current_trace() -> ActiveTrace | NullTrace:
    """The trace of the running request or turn, or a NullTrace."""
    return _current.get() or NULL_TRACE


def current_trace_id() -> str | None:
    t = _current.get()
    return t.id if t is not None else None


@contextlib.contextmanager
def span(name: str, **attrs: Any) -> Iterator[ActiveSpan]:
    """A span on the current trace (or nothing, outside one)."""
    with current_trace().span(name, **attrs) as s:
        yield s


class Tracer:
    """Opens traces and hands each finished one to `sink` (called on the event loop thread)."""

    def __init__(self, sink: Callable[[ActiveTrace], None] | None = None) -> None:
        self.sink = sink

    def begin(self, kind: str, name: str, *, keep: bool = True, **tags: Any) -> ActiveTrace:
        t = ActiveTrace(
            id=new_trace_id(),
            kind=kind,
            name=name,
            started=time.time(),
            t0=time.perf_counter(),
            keep=keep,
        )
        if tags:
            t.tag(**tags)
            t.keep = keep
        return t

    def activate(self, trace: ActiveTrace) -> Token[ActiveTrace | None]:
        """Make `trace` the current one in this context; pass the token to `deactivate`."""
        return _current.set(trace)

    def deactivate(self, token: Token[ActiveTrace | None]) -> None:
        _current.reset(token)

    def finish(self, trace: ActiveTrace, status: str | None = None) -> None:
        """End the trace (once) and hand it to the sink if it is to be kept."""
        if trace.finished:
            return
        if status is not None and trace.status == "ok":
            trace.status = status
        trace.duration_s = time.perf_counter() - trace.t0
        now = time.perf_counter()
        for s in trace.spans:
            if s.end is None:  # still open (a stream cut short): it ends with the trace
                s.end = now
                s.attrs.setdefault("unfinished", True)
        trace.finished = True
        if trace.keep and self.sink is not None:
            try:
                self.sink(trace)
            except Exception:
                log.exception("could not queue trace %s", trace.id)

    @contextlib.contextmanager
    def trace(self, kind: str, name: str, **tags: Any) -> Iterator[ActiveTrace]:
        """A trace around a block of work that does not come through HTTP (it becomes current)."""
        t = self.begin(kind, name, **tags)
        token = self.activate(t)
        try:
            yield t
        except BaseException as exc:
            t.fail(
                "cancelled" if isinstance(exc, GeneratorExit | KeyboardInterrupt) else "error",
                error=f"{type(exc).__name__}: {exc}"[:500],
            )
            raise
        finally:
            self.deactivate(token)
            self.finish(t)
