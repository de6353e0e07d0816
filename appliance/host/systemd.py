"""systemd integration: sd_notify (READY, STOPPING, WATCHDOG, STATUS) and the watchdog pings.

The unit is `Type=notify`: systemd considers the appliance started only when it says READY=1,
which the HTTP server does once its socket is bound and the store migrated. `WatchdogSec` makes
systemd restart a daemon whose event loop stops answering: the pings come from a task on that
loop, every half of WATCHDOG_USEC. The protocol is one datagram of `KEY=VALUE` lines to the
AF_UNIX socket in $NOTIFY_SOCKET (a leading `@` means the abstract namespace), so it needs no
library. Outside systemd every call is a no-op.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Mapping

log = logging.getLogger("appliance.systemd")


class SystemdNotifier:
    def __init__(self, address: str | None) -> None:
        self.address = address or None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> SystemdNotifier:
        return cls((env if env is not None else os.environ).get("NOTIFY_SOCKET"))

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def notify(self, *lines: str) -> bool:
        """Send `KEY=VALUE` lines; False (never an exception) when there is no systemd."""
        if self.address is None:
            return False
        addr = "\0" + self.address[1:] if self.address.startswith("@") else self.address
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
                s.connect(addr)
                s.sendall("\n".join(lines).encode())
            return True
        except OSError as exc:
            log.warning("sd_notify to %s failed: %s", self.address, exc)
            return False

    def ready(self, status: str = "") -> bool:
        return self.notify(
            "READY=1", f"MAINPID={os.getpid()}", *([f"STATUS={status}"] if status else [])
        )

    def stopping(self, status: str = "stopping") -> bool:
        return self.notify("STOPPING=1", f"STATUS={status}")

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    def status(self, text: str) -> bool:
        return self.notify(f"STATUS={text}")


def watchdog_interval(env: Mapping[str, str] | None = None, pid: int | None = None) -> float | None:
    """Seconds between pings (half of WATCHDOG_USEC), or None when no watchdog is asked for
    (or it is meant for another process, per WATCHDOG_PID)."""
    env = env if env is not None else os.environ
    usec = env.get("WATCHDOG_USEC", "")
    owner = env.get("WATCHDOG_PID", "")
    if owner and owner.isdigit() and int(owner) != (pid if pid is not None else os.getpid()):
        return None
    if not usec.isdigit() or int(usec) <= 0:
        return None
    return int(usec) / 1_000_000 / 2


async def watchdog_loop(notifier: SystemdNotifier, interval: float) -> None:
    """Ping systemd's watchdog until cancelled. It runs on the event loop on purpose: if the loop
    is blocked, the pings stop and systemd restarts the daemon."""
    while True:
        notifier.watchdog()
        await asyncio.sleep(interval)
