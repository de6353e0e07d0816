"""Typed views of what the daemon returns, built by `appliance.client` from JSON.

Screens and widgets only read these records; they never index raw dicts. One module per area of
the API, re-exported here.
"""

from __future__ import annotations

from appliance.client.records.daemon import (
    ConnectionState,
    DaemonEvent,
    DaemonStatus,
    GpuDevice,
    GpuReport,
    Health,
    HostSample,
    ModelInfo,
    PullInfo,
    StreamStatus,
)
from appliance.client.records.sandboxes import Language, RunResult, Sandbox
from appliance.client.records.sessions import Agent, Session, ToolCall, TranscriptEntry, TurnEvent
from appliance.client.records.traces import Span, Trace, UsageTotals

__all__ = [
    "Agent",
    "ConnectionState",
    "DaemonEvent",
    "DaemonStatus",
    "GpuDevice",
    "GpuReport",
    "Health",
    "HostSample",
    "Language",
    "ModelInfo",
    "PullInfo",
    "RunResult",
    "Sandbox",
    "Session",
    "Span",
    "StreamStatus",
    "ToolCall",
    "Trace",
    "TranscriptEntry",
    "TurnEvent",
    "UsageTotals",
]
