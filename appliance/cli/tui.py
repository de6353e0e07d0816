"""`appliance tui`: the Textual console, against a local or a remote daemon.

This is the only module of `appliance` that reaches the `tui` package (and so textual), and it does
so only when the command runs; import-linter's contract in pyproject.toml names this one exception.
"""

from __future__ import annotations

import argparse

from appliance.cli.main import add_client_args


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "tui", help="the terminal console: models, sessions, sandboxes, GPU and traces"
    )
    add_client_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tui.app import run_console

    return run_console(args.url, args.token)
