"""Per-request telemetry: a trace per request, its id in `X-Trace-Id`, request metrics, a log line.

Plain ASGI around the whole Litestar handler (outside the token check), so every response, a 401
or a 404 included, carries the trace id. The trace is current for everything the request runs,
its streamed body included, so services add spans to it without being handed anything (see
appliance.telemetry.tracing). Metrics are labelled by route template (`/api/models/{model_id}`),
never by raw path; unmatched paths share one label.

Reads (GET, HEAD) are traced but not stored unless something inside them added a span or they
failed with a 5xx: otherwise polling `/api/status` or `/metrics` would push real work out of the
trace retention. Their trace id is still in the header and in the log line.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from appliance.telemetry.events import EventBus
from appliance.telemetry.recorder import Telemetry
from appliance.telemetry.tracing import TRACE_HEADER

log = logging.getLogger("appliance.api")

ASGIApp = Any
UNMATCHED = "<unmatched>"
_HEADER = TRACE_HEADER.lower().encode()
_READS = frozenset({"GET", "HEAD", "OPTIONS"})


class RequestTelemetry:
    def __init__(self, app: ASGIApp, telemetry: Telemetry, events: EventBus) -> None:
        self.app = app
        self.telemetry = telemetry
        self.events = events

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        tracer, m = self.telemetry.tracer, self.telemetry.metrics
        method = scope.get("method", "GET")
        path = scope.get("path", "")
        trace = tracer.begin("request", f"{method} {path}", keep=method not in _READS)
        trace.attrs.update(method=method, path=path)
        token = tracer.activate(trace)
        status = 0
        t0 = time.perf_counter()

        async def send_with_trace_id(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                message = {
                    **message,
                    "headers": [*message.get("headers", ()), (_HEADER, trace.id.encode())],
                }
            await send(message)

        try:
            await self.app(scope, receive, send_with_trace_id)
        except BaseException as exc:
            trace.fail(
                "cancelled" if not isinstance(exc, Exception) else "error",
                error=f"{type(exc).__name__}: {exc}"[:300],
            )
            status = status or 500
            raise
        finally:
            seconds = time.perf_counter() - t0
            route = scope.get("path_template") or UNMATCHED
            trace.name = f"{method} {route}"
            trace.attrs["http_status"] = status
            if status >= 500:
                trace.fail("error")
                trace.keep = True
                self.events.publish(
                    "error", route=route, method=method, status=status, trace_id=trace.id
                )
            m.http_requests.labels(route, method, str(status)).inc()
            m.http_duration.labels(route, method).observe(seconds)
            level = logging.DEBUG if method in _READS and status < 400 else logging.INFO
            if status >= 500:
                level = logging.WARNING
            if log.isEnabledFor(level):
                log.log(
                    level,
                    "request",
                    extra={
                        "fields": {
                            "method": method,
                            "route": route,
                            "status": status,
                            "ms": round(seconds * 1000.0, 2),
                        }
                    },
                )
            tracer.finish(trace)
            tracer.deactivate(token)
