"""Traces of requests, turns and runs, with their spans, and the usage ledger's totals."""

from __future__ import annotations

from typing import Any

import msgspec

from appliance.client.records.parse import as_dict, as_list, as_num, as_opt_str, as_str


class Span(msgspec.Struct, frozen=True):
    name: str
    start_ms: float
    """Offset from the start of the trace."""
    duration_ms: float
    parent: str | None = None
    attrs: dict[str, Any] = msgspec.field(default_factory=dict)

    @classmethod
    def from_json(cls, d: Any) -> Span:
        d = as_dict(d)
        return cls(
            name=as_str(d.get("name"), "?"),
            start_ms=as_num(d.get("start_ms")) or 0.0,
            duration_ms=as_num(d.get("duration_ms")) or 0.0,
            parent=as_opt_str(d.get("parent")),
            attrs=as_dict(d.get("attrs")),
        )


class Trace(msgspec.Struct, frozen=True):
    id: str
    kind: str
    name: str
    started: float
    duration_ms: float
    status: str = "ok"
    model: str | None = None
    session_id: str | None = None
    spans: list[Span] = msgspec.field(default_factory=list)

    @classmethod
    def from_json(cls, d: Any) -> Trace:
        d = as_dict(d)
        return cls(
            id=as_str(d.get("id"), "?"),
            kind=as_str(d.get("kind")),
            name=as_str(d.get("name")),
            started=as_num(d.get("started")) or 0.0,
            duration_ms=as_num(d.get("duration_ms")) or 0.0,
            status=as_str(d.get("status"), "ok"),
            model=as_opt_str(d.get("model")),
            session_id=as_opt_str(d.get("session_id")),
            spans=[Span.from_json(s) for s in as_list(d.get("spans"))],
        )


class UsageTotals(msgspec.Struct, frozen=True):
    """`GET /api/usage`: named figures for a summary line, and the rows by key (model, agent...)."""

    figures: dict[str, float]
    rows: dict[str, dict[str, float]] = msgspec.field(default_factory=dict)
    """Per key (a model id when the usage is by model), its figures: tokens_out, requests, ..."""

    @classmethod
    def from_json(cls, d: Any) -> UsageTotals:
        flat: dict[str, float] = {}

        def walk(prefix: str, value: Any) -> None:
            if isinstance(value, dict):
                for k, v in value.items():
                    walk(f"{prefix}.{k}" if prefix else str(k), v)
            else:
                n = as_num(value)
                if n is not None:
                    flat[prefix] = n

        body = as_dict(d)
        walk("", {k: v for k, v in body.items() if k != "rows"})
        rows: dict[str, dict[str, float]] = {}
        for row in as_list(body.get("rows")):
            row = as_dict(row)
            key = row.get("key")
            if isinstance(key, str) and key:
                rows[key] = {k: n for k, v in row.items() if (n := as_num(v)) is not None}
        return cls(figures=flat, rows=rows)
