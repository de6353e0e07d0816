"""The live event bus behind `GET /api/events`.

Parts of the daemon publish small dict events (model state changes, load progress, sandbox and
session activity, errors); each subscriber gets its own bounded queue. A subscriber that falls
behind loses its oldest events (and is told how many), never slows the publisher down.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any


class Subscription:
    def __init__(self, maxsize: int) -> None:
        self.queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize)
        self.dropped = 0

    def offer(self, event: dict[str, Any]) -> None:
        while True:
            try:
                self.queue.put_nowait(event)
                return
            except asyncio.QueueFull:
                self.queue.get_nowait()
                self.dropped += 1

    async def get(self) -> dict[str, Any]:
        return await self.queue.get()


class EventBus:
    def __init__(self, history: int = 200) -> None:
        self._subs: set[Subscription] = set()
        self._seq = itertools.count(1)
        self._history: list[dict[str, Any]] = []
        self._history_size = history
        self._loop: asyncio.AbstractEventLoop | None = None

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

    def _deliver(self, event: dict[str, Any]) -> None:
        self._history.append(event)
        del self._history[: -self._history_size]
        for sub in list(self._subs):
            sub.offer(event)

    def recent(self, n: int = 50) -> list[dict[str, Any]]:
        return self._history[-n:]

    @asynccontextmanager
    async def subscribe(self, maxsize: int = 1000) -> AsyncIterator[Subscription]:
        self._loop = asyncio.get_running_loop()
        sub = Subscription(maxsize)
        self._subs.add(sub)
        try:
            yield sub
        finally:
            self._subs.discard(sub)
