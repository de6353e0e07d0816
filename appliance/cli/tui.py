"""`appliance tui`: the Textual console, against a local or a remote daemon.

This is the only module of `appliance` that reaches the `tui` package (and so textual), and it does
so only when the command runs; import-linter's contract in pyproject.toml names this one exception.
"""

from __future__ import annotations

import argparse
import logging

from appliance.cli.main import add_client_args


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("tui", help="the terminal console: models, sessions, sandboxes, GPU and traces")
    add_client_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from textual.logging import TextualHandler

    from tui.app import ApplianceApp
    from tui.client import ApplianceClient

    # log lines written to the terminal would tear through the screen: send them to textual's log
    root = logging.getLogger()
    root.handlers[:] = [TextualHandler()]
    logging.getLogger("httpx").setLevel(logging.WARNING)
    app = ApplianceApp(ApplianceClient(args.url, args.token))
    app.run()
    return int(app.return_code or 0)
