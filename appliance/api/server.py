"""The HTTP server: uvicorn, plus what a daemon under systemd owes its supervisor.

- READY=1 once the socket is bound and the Appliance started (its store is migrated when it is
  built, before this), with the address in STATUS;
- WATCHDOG=1 pings from the event loop while it runs (when the unit sets WatchdogSec);
- on SIGTERM or SIGINT: STOPPING=1 at once, open event streams end, and uvicorn's graceful
  shutdown runs: the listening socket closes (no new requests), requests in flight get
  `server.shutdown_grace_s` to finish and are cancelled after it, then the lifespan shutdown calls
  `Appliance.stop()` (sessions parked, sandboxes and model workers stopped, telemetry written,
  the store closed);
- a SIGTERM stop exits 0. (uvicorn re-raises the signal after its shutdown so the process dies
  of it; a clean stop that exits 0 reads better in `systemctl status` and to any supervisor.)

The listening sockets are bound before anything starts, so a port in use fails before a sandbox
or a worker exists. uvicorn runs `Appliance.start` in its lifespan (which undoes itself when it
fails, and then uvicorn exits 3) and `Appliance.stop` in its shutdown; `Appliance.stop` runs once
more after uvicorn returns, for the ways out that skip the lifespan shutdown (a second Ctrl-C).

Connections are admitted by appliance.api.connections: the open-file limit is raised at start,
open connections are capped below it (idle ones make room for new ones), keep-alive and request
heads are timed out, so idle sockets cannot lock clients out.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import threading
from collections.abc import Iterator
from types import FrameType
from typing import Any

import uvicorn
from uvicorn.protocols.http.auto import AutoHTTPProtocol

from appliance.api.connections import (
    ConnectionGuard,
    accept_backlog,
    connection_cap,
    guarded_protocol,
    raise_open_file_limit,
)
from appliance.app import Appliance
from appliance.config import ServerConfig
from appliance.errors import ApplianceError
from appliance.host.systemd import SystemdNotifier, watchdog_interval, watchdog_loop

log = logging.getLogger("appliance.server")

_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class ApplianceServer(uvicorn.Server):
    def __init__(
        self,
        config: uvicorn.Config,
        *,
        appliance: Appliance,
        notifier: SystemdNotifier | None = None,
    ) -> None:
        super().__init__(config)
        self.appliance = appliance
        self.notifier = notifier or SystemdNotifier.from_env()
        self._watchdog: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping = False
        self._sigint = False

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        interval = watchdog_interval()
        if interval is not None:  # pings start before the (possibly slow) lifespan startup
            self._watchdog = asyncio.create_task(watchdog_loop(self.notifier, interval))
        await super().startup(sockets)
        if self.should_exit or not self.started:
            return
        where = f"http://{self.config.host}:{self.config.port}"
        self.appliance.events.publish("daemon.ready", url=where)
        self.notifier.ready(status=f"serving on {where}")
        log.info(
            "ready",
            extra={
                "fields": {"url": where, "systemd": self.notifier.enabled, "watchdog_s": interval}
            },
        )

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if sig == signal.SIGINT:
            self._sigint = True
        self._begin_stop()
        super().handle_exit(sig, frame)

    def _begin_stop(self) -> None:
        if self._stopping:
            return
        self._stopping = True
        self.notifier.stopping()
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._close_streams)

    def _close_streams(self) -> None:
        self.appliance.events.publish("daemon.stopping")
        self.appliance.events.close()

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self._begin_stop()
        log.info(
            "stopping",
            extra={
                "fields": {
                    "grace_s": self.config.timeout_graceful_shutdown,
                    "connections": len(self.server_state.connections),
                }
            },
        )
        try:
            await super().shutdown(sockets)
        finally:
            if self._watchdog is not None:
                self._watchdog.cancel()
                with contextlib.suppress(BaseException):
                    await self._watchdog
        log.info("stopped")

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in _SIGNALS}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        if self._sigint:  # Ctrl-C keeps its usual meaning for whoever started us
            signal.raise_signal(signal.SIGINT)


def listen(host: str, port: int) -> list[socket.socket]:
    """The API's listening sockets, bound as asyncio would (every address `host` resolves to)."""
    socks: list[socket.socket] = []
    try:
        infos = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
        for family, kind, proto, _, addr in dict.fromkeys(infos):
            sock = socket.socket(family, kind, proto)
            socks.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(addr)
    except OSError as exc:
        for sock in socks:
            sock.close()
        raise ApplianceError(
            f"cannot listen on {host}:{port}: {exc.strerror or exc}. Stop the program that uses "
            "the port, or choose another: `appliance serve --port N` or [server] port in the config"
        ) from exc
    return socks


def serve(
    appliance: Appliance,
    app: Any,
    server_config: ServerConfig,
    sockets: list[socket.socket] | None = None,
) -> int:
    """Run the server until a signal stops it; returns the exit code."""
    sockets = sockets if sockets is not None else listen(server_config.host, server_config.port)
    open_files = raise_open_file_limit()
    cap = connection_cap(server_config.max_connections, open_files)
    guard = ConnectionGuard(cap, server_config.header_timeout_s)
    log.info(
        "connections",
        extra={
            "fields": {"max": cap, "open_files": open_files, "backlog": accept_backlog(open_files)}
        },
    )
    config = uvicorn.Config(
        app,
        host=server_config.host,
        port=server_config.port,
        log_config=None,  # our logging (appliance.telemetry.logs) formats uvicorn's lines too
        log_level="info",
        access_log=False,  # the request middleware logs each request, with its trace id
        timeout_graceful_shutdown=server_config.shutdown_grace_s,  # type: ignore[arg-type]
        lifespan="on",
        http=guarded_protocol(AutoHTTPProtocol, guard),
        ws="none",  # no route speaks WebSocket; an upgrade is answered as plain HTTP
        backlog=accept_backlog(open_files),
        limit_concurrency=cap + 1,  # reached only when every connection is busy: 503
        timeout_keep_alive=server_config.keep_alive_s,  # type: ignore[arg-type]
    )
    server = ApplianceServer(config, appliance=appliance)
    asyncio.run(_serve(server, sockets))
    return 0 if server.started else 1


async def _serve(server: ApplianceServer, sockets: list[socket.socket]) -> None:
    try:
        await server.serve(sockets)
    finally:
        await server.appliance.stop()  # nothing left to do after a lifespan shutdown ran
