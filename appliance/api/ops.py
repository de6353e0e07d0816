"""Operations routes: health, status, GPU, live events, traces, usage and Prometheus metrics."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from litestar import Controller, Request, Response, get
from litestar.di import NamedDependency
from litestar.params import FromPath, FromQuery
from litestar.response import ServerSentEvent
from litestar.response.sse import ServerSentEventMessage

from appliance import __version__
from appliance.api import sse
from appliance.app import Appliance
from appliance.store.traces import Trace
from appliance.telemetry.metrics import CONTENT_TYPE


async def _live(
    events: AsyncIterator[dict[str, Any] | None],
) -> AsyncIterator[ServerSentEventMessage]:
    yield sse.comment("connected")
    async for ev in events:
        yield sse.comment("ping") if ev is None else sse.event(ev, event_id=int(ev.get("seq", 0)))


class OpsController(Controller):
    tags = ["operations"]

    @get("/api/health")
    async def health(self) -> dict[str, Any]:
        return {"status": "ok", "version": __version__}

    @get("/api/status")
    async def status(self, appliance: NamedDependency[Appliance]) -> dict[str, Any]:
        return await appliance.status()

    @get("/api/gpu")
    async def gpu(self, appliance: NamedDependency[Appliance]) -> dict[str, Any]:
        return await appliance.operations.gpu()

    @get("/api/events")
    async def events(
        self,
        appliance: NamedDependency[Appliance],
        request: Request[Any, Any, Any],
        since: FromQuery[int | None] = None,
        types: FromQuery[str | None] = None,
    ) -> ServerSentEvent:
        """SSE of live events; `since` (or Last-Event-ID) replays kept events after that seq;
        `types` is a comma-separated list of type prefixes (`model.,sandbox.`)."""
        last = request.headers.get("last-event-id")
        if since is None and last and last.isdigit():
            since = int(last)
        stream = appliance.operations.event_stream(
            since=since, types=[t.strip() for t in (types or "").split(",")]
        )
        return sse.stream(_live(stream))

    @get("/api/traces")
    async def traces(
        self,
        appliance: NamedDependency[Appliance],
        limit: FromQuery[int] = 50,
        kind: FromQuery[str | None] = None,
        model: FromQuery[str | None] = None,
        session_id: FromQuery[str | None] = None,
        agent: FromQuery[str | None] = None,
        status: FromQuery[str | None] = None,
        since: FromQuery[str | None] = None,
    ) -> list[Trace]:
        return await appliance.operations.traces(
            limit=limit,
            kind=kind,
            model=model,
            session_id=session_id,
            agent=agent,
            status=status,
            since=since,
        )

    @get("/api/traces/{trace_id:str}")
    async def trace(self, appliance: NamedDependency[Appliance], trace_id: FromPath[str]) -> Trace:
        return await appliance.operations.trace(trace_id)

    @get("/api/usage")
    async def usage(
        self,
        appliance: NamedDependency[Appliance],
        by: FromQuery[str] = "model",
        since: FromQuery[str | None] = None,
    ) -> dict[str, Any]:
        return await appliance.operations.usage(by, since)

    @get("/metrics", media_type=CONTENT_TYPE)
    async def metrics(self, appliance: NamedDependency[Appliance]) -> Response[bytes]:
        return Response(await appliance.operations.scrape(), media_type=CONTENT_TYPE)
