"""`appliance sessions`: list sessions, show one's transcript, delete one."""

from __future__ import annotations

import argparse
import logging
import time

from appliance.cli.main import add_client_args
from appliance.client import DaemonClient, calls
from appliance.client.format import size


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("sessions", help="see and delete sessions")
    ssub = p.add_subparsers(dest="sessions_command", metavar="ACTION", required=True)
    ls = ssub.add_parser("list", help="sessions, newest first")
    ls.add_argument("--agent", help="only this agent's sessions")
    ls.add_argument("--limit", type=int, default=50)
    add_client_args(ls)
    ls.set_defaults(func=cmd_list)
    show = ssub.add_parser("show", help="a session and its transcript")
    show.add_argument("session")
    add_client_args(show)
    show.set_defaults(func=cmd_show)
    rm = ssub.add_parser("delete", help="delete a session, its parked KV state and its sandbox")
    rm.add_argument("session")
    add_client_args(rm)
    rm.set_defaults(func=cmd_delete)


def _ago(ts: float) -> str:
    s = max(0.0, time.time() - ts)
    for unit, span in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= span:
            return f"{s / span:.0f}{unit} ago"
    return f"{s:.0f}s ago"


def cmd_list(args: argparse.Namespace) -> int:
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per request is noise here
    client = DaemonClient(args.url, args.token)
    params = {"limit": args.limit, **({"agent": args.agent} if args.agent else {})}
    page = client.get("/api/sessions", params=params)
    agents = {
        a["id"]: a["name"] for a in client.get("/api/agents", params={"limit": 1000})["items"]
    }
    print(f"{'SESSION':26} {'AGENT':16} {'STATUS':8} {'MSGS':>5} {'UPDATED':>9}  TITLE")
    for s in page["items"]:
        agent = (
            agents.get(s["agent_id"], s.get("model") or "-")
            if s["agent_id"]
            else (s.get("model") or "-")
        )
        print(
            f"{s['id']:26} {agent:16} {s['status']:8} {s['message_count']:>5} {_ago(s['updated']):>9}  "
            f"{s['title'][:50]}"
        )
    if page.get("next_after"):
        print(f"(more: raise --limit beyond {args.limit})")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per request is noise here
    s = DaemonClient(args.url, args.token).get(f"/api/sessions/{calls.segment(args.session)}")
    print(
        f"session {s['id']}  status {s['status']}{' (hot)' if s.get('hot') else ''}  "
        f"{s['message_count']} messages"
        + (f"  forked from {s['parent_id']}" if s.get("parent_id") else "")
    )
    for kv in s.get("parked", []):
        print(f"parked KV state: {kv['n_tokens']} tokens, {size(kv['bytes'])}")
    for m in s["messages"]:
        who = m["role"] if not m.get("name") else f"{m['role']}:{m['name']}"
        text = m["content"] if m["content"] is not None else ""
        for call in m.get("tool_calls") or []:
            text += f"[calls {call['function']['name']}] {call['function']['arguments']}"
        print(f"{m['seq']:>4} {who:>14}  " + text.replace("\n", "\n" + " " * 21))
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per request is noise here
    DaemonClient(args.url, args.token).call(calls.delete_session(args.session))
    print(f"deleted session {args.session}")
    return 0
