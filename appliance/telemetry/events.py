"""The live event bus behind `GET /api/events`.

Parts of the daemon publish small dict events (model state changes, load progress, sandbox and
session activity, errors); each subscriber gets its own bounded queue. A subscriber that falls
behind loses its oldest events (and is told how many), never slows the publisher down.

    events.publish("sandbox.created", sandbox=sid, language="python")

Every event gets a sequence number (`seq`, the SSE id), a `type` and a timestamp `ts`. The last
`history` events are kept, so a client that reconnects with the last seq it saw (SSE's
Last-Event-ID) misses nothing in between. Listeners (`listen`) are called synchronously for
every event on the event loop; telemetry uses them to turn model lifecycle events into metrics
and usage. `close()` ends every subscription (the daemon is stopping: open event streams must not
hold the HTTP server's graceful shutdown for its whole grace period).

Event types in use: model.state, model.fetch, model.evicted, model.thrashing (scheduler); sandbox.created,
sandbox.destroyed, sandbox.run (sandboxes); image.pull (image pulls: pulling, done or failed,
with bytes_done/bytes_total); session.turn.started, session.turn.finished
(agents); error (the API, for 5xx responses); daemon.ready, daemon.stopping.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

log = logging.getLogger("appliance.events")

Listener = Callable[[dict[str, Any]], None]

CLOSED: dict[str, Any] = {"type": "_closed"}
"""Put in a subscription's queue when the bus closes; `Subscription.get` turns it into None."""


class Subscription:
    def __init__(self, maxsize: int) -> None:
        self.queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize)
        self.dropped = 0
        self.closed = False

    def offer(self, event: dict[str, Any]) -> None:
        while True:
            try:
                self.queue.put_nowait(event)
                return
            except asyncio.QueueFull:
                self.queue.get_nowait()
                self.dropped += 1

    async def get(self) -> dict[str, Any] | None:
        """The next event, or None once the bus is closed."""
        if self.closed and self.queue.empty():
            return None
        event = await self.queue.get()
        if event is CLOSED:
            self.closed = True
            return None
        return event


class EventBus:
    def __init__(self, history: int = 200) -> None:
        self._subs: set[Subscription] = set()
        self._seq = itertools.count(1)
        self._history: list[dict[str, Any]] = []
        self._history_size = history
        self._loop: asyncio.AbstractEventLoop | None = None
        self._listeners: list[Listener] = []
        self.closed = False

    def publish(self, type_: str, **data: Any) -> dict[str, Any]:
        """Publish from the event loop or from any thread."""
        event = {"seq": next(self._seq), "type": type_, "ts": time.time(), **data}
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if loop is None and self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._deliver, event)
        else:
            if loop is not None:
                self._loop = loop
            self._deliver(event)
        return event

    def listen(self, listener: Listener) -> None:
        """Call `listener(event)` for every event, on the event loop. It must be quick; its
        exceptions are logged and never reach the publisher."""
        self._listeners.append(listener)

    def bind_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        """The loop that events published from other threads are delivered on."""
        self._loop = loop

    def _deliver(self, event: dict[str, Any]) -> None:
        self._history.append(event)
        del self._history[: -self._history_size]
        for listener in self._listeners:
            try:
                listener(event)
            except Exception:
                log.exception("event listener failed on %s", event.get("type"))
        if self.closed:
            return
        for sub in list(self._subs):
            sub.offer(event)

    def recent(self, n: int = 50) -> list[dict[str, Any]]:
        return self._history[-n:]

    def since(self, seq: int) -> list[dict[str, Any]]:
        """Kept events with a sequence number above `seq`, oldest first."""
        return [e for e in self._history if e["seq"] > seq]

    def close(self) -> None:
        """End every subscription (call on the event loop). Publishing still works."""
        self.closed = True
        for sub in list(self._subs):
            sub.offer(CLOSED)

    @asynccontextmanager
    async def subscribe(self, maxsize: int = 1000) -> AsyncIterator[Subscription]:
        self._loop = asyncio.get_running_loop()
        sub = Subscription(maxsize)
        if self.closed:
            sub.offer(CLOSED)
        self._subs.add(sub)
        try:
            yield sub
        finally:
            self._subs.discard(sub)
