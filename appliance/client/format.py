"""How figures read for people: sizes and durations. One place, so the CLI and every screen of
the console write "1.2 GiB", "3.4 s" and "3m05s" the same way."""

from __future__ import annotations

import time


def size(n: float | None) -> str:
    """Bytes as B/KiB/MiB/GiB with one decimal; "-" for unknown or zero."""
    if not n:
        return "-"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


def size_short(n: float | None) -> str:
    """Bytes in at most five characters ("974M", "23.5G"), for gauges in narrow terminals."""
    if not n:
        return "-"
    value = float(n)
    for unit in ("B", "K", "M", "G", "T"):
        if value < 1000 or unit == "T":
            return f"{value:.0f}{unit}" if value >= 100 or unit == "B" else f"{value:.1f}{unit}"
        value /= 1024
    return f"{value:.0f}T"


def duration_ms(ms: float | None) -> str:
    if ms is None:
        return "-"
    if ms < 1000:
        return f"{ms:.0f} ms"
    if ms < 60_000:
        return f"{ms / 1000:.1f} s"
    return f"{ms / 60_000:.1f} min"


def countdown(seconds: float | None) -> str:
    """Seconds left as "42s", "3m05s", "1h02m"; "-" when nothing is counting down."""
    if seconds is None:
        return "-"
    s = max(0, int(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


def clock(ts: float | None) -> str:
    """A timestamp as the local HH:MM:SS."""
    if not ts:
        return "--:--:--"
    return time.strftime("%H:%M:%S", time.localtime(ts))


def percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}%"
