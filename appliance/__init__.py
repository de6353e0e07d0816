"""Serverless AI Appliance: a single-box serverless AI runtime.

Each lifecycle has one package:
- a model's (profiles, fetch, the scheduler that wakes and parks it, its worker process):
  appliance.models;
- a session's (agents, turns, context, tools, KV parking, the Responses API): appliance.sessions;
- a sandbox's (bwrap policy, limits, the warm pool, workspaces, REPLs, its service):
  appliance.sandbox.

Around them: appliance.openai (OpenAI's shapes on the models), appliance.store (SQLite),
appliance.telemetry (metrics, events, traces, usage), appliance.host (doctor, systemd, the
janitor, the worker jail), appliance.app (the composition root that builds it all from the
config), appliance.api (everything over HTTP), appliance.client (the one client of that HTTP
API, used by appliance.cli and the tui). The layers and what may import what are import-linter
contracts in pyproject.toml.
"""

from __future__ import annotations

__version__ = "0.1.0"
