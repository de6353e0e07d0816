"""`appliance agents`: list the agents, show one, and list the tools one can call."""

from __future__ import annotations

import argparse
import json
import logging

from appliance.cli.main import add_client_args
from appliance.client import DaemonClient, calls


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("agents", help="see the agents")
    asub = p.add_subparsers(dest="agents_command", metavar="ACTION", required=True)
    ls = asub.add_parser("list", help="agents, their model and tools")
    add_client_args(ls)
    ls.set_defaults(func=cmd_list)
    show = asub.add_parser("show", help="one agent, with its persona and parameters")
    show.add_argument("agent", help="name or id")
    add_client_args(show)
    show.set_defaults(func=cmd_show)
    tools = asub.add_parser(
        "tools", help="every tool an agent can call, with its source (its MCP servers are asked)"
    )
    tools.add_argument("agent", help="name or id")
    add_client_args(tools)
    tools.set_defaults(func=cmd_tools)


def cmd_list(args: argparse.Namespace) -> int:
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per request is noise here
    client = DaemonClient(args.url, args.token)
    print(f"{'NAME':20} {'MODEL':26} {'TOOLS':14} {'SOURCE':8} DESCRIPTION")
    after = None
    while True:
        page = client.get("/api/agents", params={"after": after} if after else None)
        for a in page["items"]:
            print(
                f"{a['name']:20} {a['model']:26} {','.join(a['tools']) or '-':14} {a['source']:8} "
                f"{a['description'][:60]}"
            )
        after = page.get("next_after")
        if not after:
            return 0


def cmd_show(args: argparse.Namespace) -> int:
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per request is noise here
    a = DaemonClient(args.url, args.token).get(f"/api/agents/{calls.segment(args.agent)}")
    for key in ("name", "id", "model", "description", "tools", "sandbox", "source", "source_path"):
        print(
            f"{key + ':':13} {a[key] if not isinstance(a[key], list) else ', '.join(a[key]) or '-'}"
        )
    print(f"{'params:':13} {json.dumps(a['params'])}")
    print("persona:")
    print("  " + (a["persona"] or "-").replace("\n", "\n  "))
    return 0


def cmd_tools(args: argparse.Namespace) -> int:
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per request is noise here
    client = DaemonClient(args.url, args.token)
    listing = client.get(f"/api/agents/{calls.segment(args.agent)}/tools")
    print(f"{'TOOL':36} {'SOURCE':20} DESCRIPTION")
    for t in listing["items"]:
        about = f"ERROR: {t['error']}" if t.get("error") else t.get("description", "")
        print(f"{t['name']:36} {t['source']:20} {about.splitlines()[0][:80] if about else ''}")
    if not listing["items"]:
        print(f"(agent {listing['agent']} has no tools)")
    return 0
