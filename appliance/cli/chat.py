"""`appliance chat`: a streamed terminal chat with an agent, over the daemon's HTTP API.

It opens a session (or continues one with --session) and sends each line typed as a turn,
printing the agent's tokens as they arrive, its tool calls and their results, and a line of
timings at the end of each turn. Ctrl-C during a turn stops that turn (the session stays usable);
Ctrl-D or an empty line at EOF ends the chat. `-m TEXT` sends messages without a prompt, for
scripts.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Iterator
from typing import Any, TextIO

from appliance.cli.main import add_client_args
from appliance.client import DaemonClient, TurnEvent, calls


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("chat", help="chat with an agent in the terminal")
    p.add_argument("--agent", default="assistant", help="agent name (default: assistant)")
    p.add_argument("--session", help="continue this session instead of opening a new one")
    p.add_argument(
        "--model", help="override the agent's model (or chat with a bare model with --agent '')"
    )
    p.add_argument(
        "-m", "--message", action="append", help="send this message and exit (repeatable)"
    )
    p.add_argument("--timings", action="store_true", help="print each turn's timings")
    add_client_args(p)
    p.set_defaults(func=cmd_chat)


def print_turn(events: Iterator[TurnEvent], out: TextIO, timings: bool) -> bool:
    """Print a turn as it streams; False when it ended with an error."""
    streamed = False
    for ev in events:
        data = ev.data
        if ev.kind == "token":
            out.write(ev.text)
            streamed = True
        elif ev.kind == "tool_call" and ev.tool_call is not None:
            out.write(f"\n[{ev.tool_call.name}] {_arguments(ev.tool_call.arguments)}\n")
        elif ev.kind == "tool_result":
            out.write(f"[{data['name']} -> {data['status']}] {ev.text}\n")
            streamed = False
        elif ev.kind == "message":  # data: the stored message
            if data["role"] == "system" and data.get("meta", {}).get("context_marker"):
                out.write(f"\n{ev.text}\n")
            elif data["role"] == "assistant" and ev.text and not streamed:
                out.write(ev.text)
        elif ev.kind == "done":
            out.write("\n")
            if timings:
                t = data["timings"]
                restored = "restored from disk, " if t.get("kv_restored") else ""
                out.write(
                    f"({data['usage']['completion_tokens']} tokens, first token "
                    f"{t.get('first_token_ms') or 0:.0f} ms, {restored}"
                    f"{t.get('cached_tokens', 0)} prompt tokens cached)\n"
                )
        elif ev.kind == "error":
            out.write("\n")
            print(f"error: {ev.text}", file=sys.stderr)
            return False
        out.flush()
    return True


def _arguments(raw: Any) -> str:
    try:
        args = json.loads(raw) if isinstance(raw, str) else raw
    except ValueError:
        return str(raw)
    if isinstance(args, dict) and set(args) == {"code"}:
        return "\n" + str(args["code"])
    return json.dumps(args, ensure_ascii=False)


def cmd_chat(args: argparse.Namespace) -> int:
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per request is noise here
    client = DaemonClient(args.url, args.token)
    if args.session:
        session = client.get(f"/api/sessions/{calls.segment(args.session)}")
    else:
        body: dict[str, Any] = {"agent": args.agent or None}
        if args.model:
            body["model"] = args.model
        session = client.post("/api/sessions", json=body)
    sid = session["id"]
    print(
        f"session {sid}" + (f" (agent {args.agent})" if args.agent and not args.session else ""),
        file=sys.stderr,
    )
    ok = True
    if args.message:
        for text in args.message:
            ok = print_turn(client.turn(sid, text), sys.stdout, args.timings) and ok
        return 0 if ok else 1
    interactive = sys.stdin.isatty()
    while True:
        try:
            text = input("you> " if interactive else "")
        except EOFError:
            break
        except KeyboardInterrupt:
            print(file=sys.stderr)
            break
        if not text.strip():
            continue
        try:
            ok = print_turn(client.turn(sid, text), sys.stdout, args.timings) and ok
        except KeyboardInterrupt:
            print("\n(turn stopped)", file=sys.stderr)
    return 0 if ok else 1
