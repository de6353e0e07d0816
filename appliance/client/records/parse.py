"""Lenient readers of JSON values: a missing or mistyped field takes the default.

One console may face daemons of different versions, so a field that is absent or of another type
must not crash a screen; the records fall back to a neutral value instead.
"""

from __future__ import annotations

from typing import Any


def as_num(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def as_int(value: Any, default: int = 0) -> int:
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else default


def as_str(value: Any, default: str = "") -> str:
    return value if isinstance(value, str) else default


def as_opt_str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def as_dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []
