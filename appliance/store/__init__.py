"""The persistent store of the appliance: one SQLite database (apsw) in the state directory.

Open it with `Store(state_dir)` (appliance.store.store); the repositories and record types are
re-exported here. Design notes live in each module's docstring: `db` (connections, durability,
migrations), `migrations` (the schema ladder), and one module per table group.
"""

from __future__ import annotations

from appliance.store.agents import Agent, AgentPatch, Agents, AgentSpec, GenerationParams
from appliance.store.db import Database, StoreError
from appliance.store.kv_index import KvEntry, KvIndex, ParkResult
from appliance.store.mcp_servers import McpServerSpec
from appliance.store.messages import Message, MessageDraft, Messages
from appliance.store.records import Page
from appliance.store.responses import ResponseLink, ResponseLinks
from appliance.store.sessions import Session, SessionCleanup, Sessions
from appliance.store.store import Store
from appliance.store.tokens import ApiToken, ApiTokens, NewApiToken
from appliance.store.tool_runs import ToolRun, ToolRuns
from appliance.store.traces import Span, Trace, TraceLog, new_trace_id
from appliance.store.usage import UsageLedger, UsageTotals
from appliance.telemetry.usage import UsageRecord

__all__ = [
    "Agent",
    "AgentPatch",
    "AgentSpec",
    "Agents",
    "ApiToken",
    "ApiTokens",
    "Database",
    "GenerationParams",
    "KvEntry",
    "KvIndex",
    "McpServerSpec",
    "Message",
    "MessageDraft",
    "Messages",
    "NewApiToken",
    "Page",
    "ParkResult",
    "ResponseLink",
    "ResponseLinks",
    "Session",
    "SessionCleanup",
    "Sessions",
    "Span",
    "Store",
    "StoreError",
    "ToolRun",
    "ToolRuns",
    "Trace",
    "TraceLog",
    "UsageLedger",
    "UsageRecord",
    "UsageTotals",
    "new_trace_id",
]
