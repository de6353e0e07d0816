"""How the console colours what it shows: model states and run outcomes, and short ids. The
figures themselves (sizes, durations, clock times) read the same in the CLI and the console, so
they live in `appliance.client.format`; they are named here too, for the widgets' one import."""

from __future__ import annotations

from appliance.client.format import clock, countdown, duration_ms, percent, size, size_short

__all__ = [
    "RUN_STATUS_STYLES",
    "STATE_STYLES",
    "clock",
    "countdown",
    "duration_ms",
    "percent",
    "short_id",
    "size",
    "size_short",
]

STATE_STYLES = {
    "ready": "green",
    "busy": "bold yellow",
    "loading": "cyan",
    "unloading": "cyan",
    "failed": "bold red",
    "unloaded": "dim",
}
"""Colour of each model state."""

RUN_STATUS_STYLES = {
    "ok": "bold green",
    "error": "bold red",
    "timeout": "bold yellow",
    "oom": "bold magenta",
    "killed": "bold red",
}


def short_id(ident: str, keep: int = 14) -> str:
    return ident if len(ident) <= keep else ident[: keep - 1] + "…"
