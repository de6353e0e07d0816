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

import httpx

from appliance.cli.client import DaemonClient
from appliance.cli.main import add_client_args
from appliance.errors import ApplianceError


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("chat", help="chat with an agent in the terminal")
    p.add_argument("--agent", default="assistant", help="agent name (default: assistant)")
    p.add_argument("--session", help="continue this session instead of opening a new one")
    p.add_argument("--model", help="override the agent's model (or chat with a bare model with --agent '')")
    p.add_argument("-m", "--message", action="append", help="send this message and exit (repeatable)")
    p.add_argument("--timings", action="store_true", help="print each turn's timings")
    add_client_args(p)
    p.set_defaults(func=cmd_chat)


def stream_turn(client: DaemonClient, session_id: str, content: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """The events of one turn as (name, data)."""
    try:
        with client.http.stream("POST", f"/api/sessions/{session_id}/messages",
                                json={"content": content}, timeout=None) as r:
            if r.status_code >= 400:
                body = r.read()
                try:
                    msg = json.loads(body)["error"]["message"]
                except (ValueError, KeyError, TypeError):
                    msg = body.decode(errors="replace")
                raise ApplianceError(f"{r.status_code}: {msg}")
            event = "message"
            for line in r.iter_lines():
                if line.startswith("event: "):
                    event = line[7:]
                elif line.startswith("data: "):
                    yield event, json.loads(line[6:])
    except httpx.ConnectError as exc:
        raise ApplianceError(f"cannot reach the appliance at {client.url} ({exc}). Start it with "
                             "`appliance serve` or pass --url.") from exc


def print_turn(events: Iterator[tuple[str, dict[str, Any]]], out: TextIO, timings: bool) -> bool:
    """Print a turn as it streams; False when it ended with an error."""
    streamed = False
    for event, data in events:
        if event == "token":
            out.write(data["text"])
            streamed = True
        elif event == "tool_call":
            out.write(f"\n[{data['name']}] {_arguments(data.get('arguments'))}\n")
        elif event == "tool_result":
            out.write(f"[{data['name']} -> {data['status']}] {data['content']}\n")
            streamed = False
        elif event == "message":
            m = data["message"]
            if m["role"] == "system" and m.get("meta", {}).get("context_marker"):
                out.write(f"\n{m['content']}\n")
            elif m["role"] == "assistant" and m.get("content") and not streamed:
                out.write(m["content"])
        elif event == "done":
            out.write("\n")
            if timings:
                t = data["timings"]
                restored = "restored from disk, " if t.get("kv_restored") else ""
                out.write(f"({data['usage']['completion_tokens']} tokens, first token "
                          f"{t.get('first_token_ms') or 0:.0f} ms, {restored}"
                          f"{t.get('cached_tokens', 0)} prompt tokens cached)\n")
        elif event == "error":
            out.write("\n")
            print(f"error: {data['error']['message']}", file=sys.stderr)
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
        session = client.get(f"/api/sessions/{args.session}")
    else:
        body: dict[str, Any] = {"agent": args.agent or None}
        if args.model:
            body["model"] = args.model
        session = client.post("/api/sessions", json=body)
    sid = session["id"]
    print(f"session {sid}" + (f" (agent {args.agent})" if args.agent and not args.session else ""),
          file=sys.stderr)
    ok = True
    if args.message:
        for text in args.message:
            ok = print_turn(stream_turn(client, sid, text), sys.stdout, args.timings) and ok
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
            ok = print_turn(stream_turn(client, sid, text), sys.stdout, args.timings) and ok
        except KeyboardInterrupt:
            print("\n(turn stopped)", file=sys.stderr)
    return 0 if ok else 1
