"""Entry point of the `appliance` command.

Each subcommand lives in its own module under appliance.cli and exposes
`register(subparsers)`, which adds its parser and sets `func` (returning an exit code).
Errors a user can cause are ApplianceErrors: they are printed as one clear line, no traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from appliance import __version__
from appliance.client.errors import ClientError
from appliance.errors import ApplianceError

SUBCOMMANDS = [
    "serve",
    "models",
    "convert",
    "run",
    "images",
    "bench",
    "doctor",
    "chat",
    "agents",
    "sessions",
    "token",
    "mcp",
    "service",
    "tui",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="appliance",
        description="Serverless AI Appliance: models, agents and sandboxes on one box.",
    )
    parser.add_argument("--version", action="version", version=f"appliance {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMANDS:
        try:
            module = importlib.import_module(f"appliance.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"appliance.cli.{name}":
                continue  # subcommand not built yet
            raise
        module.register(sub)
    return parser


def add_client_args(p: argparse.ArgumentParser) -> None:
    """--url and --token for subcommands that talk to a running daemon."""
    p.add_argument(
        "--url",
        default=os.environ.get("APPLIANCE_URL", "http://127.0.0.1:8420"),
        help="daemon URL (env APPLIANCE_URL; default http://127.0.0.1:8420)",
    )
    p.add_argument(
        "--token", default=os.environ.get("APPLIANCE_TOKEN"), help="API token (env APPLIANCE_TOKEN)"
    )


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if not args.verbose:  # a line per HTTP request drowns what the CLI and benchmarks print
        logging.getLogger("httpx").setLevel(logging.WARNING)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except ClientError as exc:  # the daemon's answer: its status, then its own words
        print(
            f"error: {exc.status}: {exc.message}" if exc.status else f"error: {exc.message}",
            file=sys.stderr,
        )
        return 1
    except ApplianceError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
