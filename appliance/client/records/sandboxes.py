"""Sandboxes: the live ones, the languages a daemon can run, and the result of a run."""

from __future__ import annotations

from typing import Any

import msgspec

from appliance.client.records.parse import as_dict, as_int, as_num, as_opt_str, as_str


class Sandbox(msgspec.Struct, frozen=True):
    id: str
    language: str
    busy: bool = False
    execs: int = 0
    created_at: float | None = None
    idle_s: float | None = None
    expires_in_s: float | None = None
    memory_mb: int = 0
    network: bool = False

    @classmethod
    def from_json(cls, d: Any) -> Sandbox:
        d = as_dict(d)
        return cls(
            id=as_str(d.get("id"), "?"),
            language=as_str(d.get("language"), "?"),
            busy=bool(d.get("busy")),
            execs=as_int(d.get("execs")),
            created_at=as_num(d.get("created_at")),
            idle_s=as_num(d.get("idle_s")),
            expires_in_s=as_num(d.get("expires_in_s")),
            memory_mb=as_int(d.get("memory_mb")),
            network=bool(d.get("network")),
        )


class Language(msgspec.Struct, frozen=True):
    name: str
    title: str
    available: bool = True
    detail: str = ""
    """Why a language is unavailable (its toolchain is missing), or a note on it."""

    @classmethod
    def from_json(cls, d: Any) -> Language:
        if isinstance(d, str):
            return cls(name=d, title=d)
        d = as_dict(d)
        name = as_str(d.get("name"), "?")
        return cls(
            name=name,
            title=as_str(d.get("title"), name),
            available=d.get("available", True) is not False,
            detail=as_str(d.get("detail")),
        )


class RunResult(msgspec.Struct, frozen=True):
    """What a one-shot run or an exec in a sandbox gave: status ok | error | timeout | oom | killed."""

    status: str
    exit_code: int | None = None
    signal: int | None = None
    stdout: str = ""
    stderr: str = ""
    stdout_truncated: bool = False
    stderr_truncated: bool = False
    duration_ms: float | None = None
    peak_memory_mb: float | None = None
    reason: str | None = None
    phase: str = "run"

    @classmethod
    def from_json(cls, d: Any) -> RunResult:
        d = as_dict(d)
        exit_code, sig = as_num(d.get("exit_code")), as_num(d.get("signal"))
        return cls(
            status=as_str(d.get("status"), "?"),
            exit_code=int(exit_code) if exit_code is not None else None,
            signal=int(sig) if sig is not None else None,
            stdout=as_str(d.get("stdout")),
            stderr=as_str(d.get("stderr")),
            stdout_truncated=bool(d.get("stdout_truncated")),
            stderr_truncated=bool(d.get("stderr_truncated")),
            duration_ms=as_num(d.get("duration_ms")),
            peak_memory_mb=as_num(d.get("peak_memory_mb")),
            reason=as_opt_str(d.get("reason")),
            phase=as_str(d.get("phase"), "run"),
        )
