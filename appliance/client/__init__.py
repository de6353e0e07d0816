"""The one client of the daemon's HTTP API, used by the CLI and the console (`tui/`).

- `calls`: each route as a `Call` (method, path, query, body, how to read the answer), spelled
  once for both clients;
- `sync.DaemonClient` (blocking, for the CLI) and `aio.ApplianceClient` (async, for the console)
  send them over httpx, and read server-sent events with httpx-sse (`sse` decodes them);
- `errors`: every failure as one `ClientError` (an `ApplianceError`) with the daemon's message;
- `records`: typed, lenient views of the answers (msgspec structs);
- `format`: sizes and durations as people read them.

It knows the daemon only by its HTTP surface: nothing here imports the daemon's internals (an
import-linter contract in pyproject.toml keeps it so), so a console can face a remote box.
"""

from __future__ import annotations

from appliance.client.aio import ApplianceClient
from appliance.client.errors import ClientError, DaemonUnauthorized, DaemonUnreachable, NotAvailable
from appliance.client.records import TurnEvent
from appliance.client.sync import DaemonClient

__all__ = [
    "ApplianceClient",
    "ClientError",
    "DaemonClient",
    "DaemonUnauthorized",
    "DaemonUnreachable",
    "NotAvailable",
    "TurnEvent",
]
