"""`appliance mcp serve --stdio`: the daemon's MCP server over stdin/stdout (appliance.mcp.relay),
for MCP clients that launch their servers as processes. Over HTTP, point clients at `/mcp`."""

from __future__ import annotations

import argparse
import asyncio
import logging

from appliance.cli.main import add_client_args


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("mcp", help="the MCP server (over HTTP it is the daemon's /mcp)")
    msub = p.add_subparsers(dest="mcp_command", metavar="ACTION", required=True)
    serve = msub.add_parser(
        "serve", help="serve MCP over stdio, relaying to the running daemon with its token"
    )
    serve.add_argument(
        "--stdio",
        action="store_true",
        required=True,
        help="talk MCP on stdin/stdout (the one transport this command serves)",
    )
    add_client_args(serve)
    serve.set_defaults(func=cmd_serve)


def cmd_serve(args: argparse.Namespace) -> int:
    from appliance.mcp.relay import check_daemon, serve_stdio

    # stdout is the protocol: logs go to stderr (main's basicConfig), and only warnings
    logging.getLogger().setLevel(logging.DEBUG if args.verbose else logging.WARNING)
    check_daemon(args.url, args.token)
    asyncio.run(serve_stdio(args.url, args.token))
    return 0
