"""Helpers for the operations tests: read /metrics samples, follow /api/events."""

from __future__ import annotations

import json
import queue
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(client: httpx.Client) -> Samples:
    """Every sample of GET /metrics, parsed by prometheus-client's own parser."""
    r = client.get("/metrics")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain")
    out: Samples = {}
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def sample(samples: Samples, name: str, **labels: str) -> float:
    """One sample's value; 0 for a labelled series that does not exist yet."""
    return samples.get((name, frozenset(labels.items())), 0.0)


def delta(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return sample(after, name, **labels) - sample(before, name, **labels)


class EventStream:
    """GET /api/events in a background thread; events (dicts) land in `events`."""

    def __init__(
        self, url: str, headers: dict[str, str] | None = None, params: dict[str, Any] | None = None
    ):
        self.events: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self.connected = threading.Event()
        self.ended = threading.Event()
        self._url, self._headers, self._params = url, headers or {}, params or {}
        self._client = httpx.Client(timeout=httpx.Timeout(60.0, read=None))
        self._thread = threading.Thread(target=self._read, daemon=True)

    def _read(self) -> None:
        try:
            with self._client.stream(
                "GET", self._url + "/api/events", headers=self._headers, params=self._params
            ) as r:
                assert r.status_code == 200, r.read()
                for line in r.iter_lines():
                    if line.startswith(": connected"):
                        self.connected.set()
                    elif line.startswith("data: "):
                        self.events.put(json.loads(line[6:]))
        except (httpx.HTTPError, AssertionError):
            pass
        finally:
            self.ended.set()
            self.events.put(None)

    def start(self) -> EventStream:
        self._thread.start()
        assert self.connected.wait(10), "the event stream did not connect"
        return self

    def close(self) -> None:
        self._client.close()

    def until(self, done: Any, timeout: float = 20.0) -> list[dict[str, Any]]:
        """Events until `done(event)` is true for one (included), in order."""
        got: list[dict[str, Any]] = []
        while True:
            ev = self.events.get(timeout=timeout)
            if ev is None:
                raise AssertionError(f"the stream ended first; got {got}")
            got.append(ev)
            if done(ev):
                return got


@contextmanager
def event_stream(url: str, **kw: Any) -> Iterator[EventStream]:
    s = EventStream(url, **kw).start()
    try:
        yield s
    finally:
        s.close()
