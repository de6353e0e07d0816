"""The messages that carry the daemon's answers into the UI.

Workers (`@work`) make the HTTP calls and post one of these back; the screen's handler updates its
widgets. So no handler ever awaits the network, and the UI stays responsive while a model loads or
a sandbox runs. The app posts the connection and event-stream messages to every dashboard screen.
None of them bubble: each is meant for the node it is posted to (a screen's copy of an event must
not come back up to the app that forwarded it).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from textual.message import Message

from appliance.client.errors import ClientError
from appliance.client.records import (
    Agent,
    ConnectionState,
    DaemonEvent,
    DaemonStatus,
    GpuReport,
    Language,
    ModelInfo,
    RunResult,
    Sandbox,
    Session,
    StreamStatus,
    Trace,
    TranscriptEntry,
    TurnEvent,
    UsageTotals,
)

# --- connection and the events stream ---------------------------------------------------------


@dataclass
class ConnectionChanged(Message, bubble=False):
    """The daemon became reachable, unreachable, or refused the token."""

    state: ConnectionState


@dataclass
class StreamChanged(Message, bubble=False):
    """The events stream went live, down, or turned out to be unsupported by this daemon."""

    status: StreamStatus


@dataclass
class DaemonEventReceived(Message, bubble=False):
    """One event from `GET /api/events`."""

    event: DaemonEvent


@dataclass
class DaemonReconnected(Message, bubble=False):
    """The daemon answers again after being unreachable: screens reload what they show."""


@dataclass
class CallFailed(Message, bubble=False):
    """A call made for `action` (what the user asked, in words) failed with `error`."""

    action: str
    error: ClientError


# --- overview and models ----------------------------------------------------------------------


@dataclass
class StatusLoaded(Message, bubble=False):
    status: DaemonStatus


@dataclass
class GpuSampled(Message, bubble=False):
    report: GpuReport


@dataclass
class ModelsLoaded(Message, bubble=False):
    models: list[ModelInfo]


@dataclass
class ModelChanged(Message, bubble=False):
    """A load, unload, pin or add finished; `model` is the daemon's view of it afterwards."""

    model: ModelInfo
    action: str


# --- sessions ---------------------------------------------------------------------------------


@dataclass
class AgentsLoaded(Message, bubble=False):
    agents: list[Agent]
    sessions: list[Session]
    models: list[ModelInfo] = field(default_factory=list)
    """Chat models, which a session can have without an agent."""


@dataclass
class TranscriptLoaded(Message, bubble=False):
    session_id: str
    entries: list[TranscriptEntry]


@dataclass
class TurnEventReceived(Message, bubble=False):
    """One event of a chat turn that is streaming in (tokens, tool calls, results, done)."""

    event: TurnEvent


@dataclass
class SessionChanged(Message, bubble=False):
    """A session was created, forked (session is the new one) or deleted (session is None)."""

    action: str
    session: Session | None = None


# --- sandboxes --------------------------------------------------------------------------------


@dataclass
class SandboxesLoaded(Message, bubble=False):
    sandboxes: list[Sandbox]
    languages: list[Language] = field(default_factory=list)


@dataclass
class SandboxChanged(Message, bubble=False):
    """A sandbox was created (sandbox set) or destroyed (sandbox None)."""

    action: str
    sandbox: Sandbox | None = None


@dataclass
class RunFinished(Message, bubble=False):
    result: RunResult
    where: str
    """"one-shot" or the id of the sandbox the code ran in."""


# --- traces -----------------------------------------------------------------------------------


@dataclass
class TracesLoaded(Message, bubble=False):
    traces: list[Trace]


@dataclass
class TraceLoaded(Message, bubble=False):
    trace: Trace


@dataclass
class UsageLoaded(Message, bubble=False):
    usage: UsageTotals
