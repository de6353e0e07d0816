"""`DaemonClient`: the CLI's blocking way to the daemon.

It sends the same calls (`appliance.client.calls`) as the console's async client and raises the
same `ClientError`s (`appliance.client.errors`), with the daemon's own message. The CLI prints
most answers as they come, so `get`/`post`/`delete` also return the plain JSON; `call` returns
the typed record, and `turn` streams a session turn's events.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, TypeVar

import httpx
from httpx_sse import EventSource

from appliance.client import calls, sse
from appliance.client.base import NO_READ_LIMIT, auth_headers
from appliance.client.calls import Call
from appliance.client.errors import error_for, unreachable
from appliance.client.records import TurnEvent

T = TypeVar("T")


def _json(payload: Any) -> Any:
    return payload


class DaemonClient:
    """Blocking access to one appliance daemon; each method is one request."""

    def __init__(
        self,
        url: str,
        token: str | None = None,
        timeout: float = 600.0,
        *,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.http = httpx.Client(
            base_url=self.url, headers=auth_headers(token), timeout=timeout, transport=transport
        )

    def close(self) -> None:
        self.http.close()

    def call(self, c: Call[T]) -> T:
        try:
            resp = self.http.request(
                c.method,
                c.path,
                json=c.body,
                params=c.params,
                timeout=NO_READ_LIMIT if c.slow else httpx.USE_CLIENT_DEFAULT,
            )
        except httpx.TransportError as exc:
            raise unreachable(self.url, exc) from exc
        err = error_for(resp, self.url)
        if err is not None:
            raise err
        return c.parse(resp.json() if resp.content else None)

    def request(
        self, method: str, path: str, *, params: dict[str, Any] | None = None, json: Any = None
    ) -> Any:
        """The answer's JSON (None for an empty answer)."""
        return self.call(Call(method, path, _json, params=params, body=json))

    def get(self, path: str, *, params: dict[str, Any] | None = None) -> Any:
        return self.request("GET", path, params=params)

    def post(self, path: str, *, params: dict[str, Any] | None = None, json: Any = None) -> Any:
        return self.request("POST", path, params=params, json=json)

    def delete(self, path: str) -> Any:
        return self.request("DELETE", path)

    def upload(
        self, path: str, content: Iterator[bytes], *, params: dict[str, Any] | None = None
    ) -> Any:
        """POST raw bytes (an image archive) as they are read; the answer's JSON."""
        try:
            resp = self.http.post(
                path,
                content=content,
                params=params,
                headers={"Content-Type": "application/octet-stream"},
                timeout=NO_READ_LIMIT,
            )
        except httpx.TransportError as exc:
            raise unreachable(self.url, exc) from exc
        err = error_for(resp, self.url)
        if err is not None:
            raise err
        return resp.json() if resp.content else None

    def turn(
        self, session_id: str, content: str, *, max_tokens: int | None = None
    ) -> Iterator[TurnEvent]:
        """One turn of a session: its events as they come, up to `done` or `error`."""
        try:
            with self.http.stream(
                "POST",
                calls.turn_path(session_id),
                json=calls.turn_body(content, max_tokens),
                timeout=NO_READ_LIMIT,
            ) as resp:
                if resp.status_code >= 400:
                    resp.read()
                err = error_for(resp, self.url)
                if err is not None:
                    raise err
                for frame in EventSource(resp).iter_sse():
                    event = sse.turn_event(frame)
                    if event is None:
                        return
                    yield event
                    if sse.ends_turn(event):
                        return
        except httpx.TransportError as exc:
            raise unreachable(self.url, exc) from exc
