"""`appliance serve`: run the daemon (HTTP API, scheduler, sandboxes) in the foreground."""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

from appliance.access import is_loopback
from appliance.config import load_config
from appliance.errors import ApplianceError, ConfigError
from appliance.private import DAEMON_UMASK

log = logging.getLogger("appliance")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("serve", help="run the daemon")
    p.add_argument(
        "--config", type=Path, help="config TOML (default ~/.config/appliance/config.toml)"
    )
    p.add_argument(
        "--state-dir", help="state directory (default $STATE_DIRECTORY or ~/.local/state/appliance)"
    )
    p.add_argument("--host", help="bind address (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (default 8420)")
    p.add_argument(
        "--no-fetch",
        action="store_true",
        help="do not fetch the default models (models.defaults) before serving",
    )
    p.set_defaults(func=run)


def fetch_defaults(appliance: object, ids: list[str]) -> None:
    from appliance.cli.progress import TerminalProgress

    catalog = appliance.catalog  # type: ignore[attr-defined]
    for mid in ids:
        try:
            if catalog.local_path(mid) is not None:
                continue
            bar = TerminalProgress()
            print(f"fetching default model {mid} ...", flush=True)
            path = catalog.ensure_local(mid, progress=bar)
            bar.finish(f"{mid}: {path}")
        except ApplianceError as exc:
            log.warning("default model %s is not available: %s", mid, exc.message)


def run(args: argparse.Namespace) -> int:
    import msgspec

    from appliance.api.app import create_app
    from appliance.api.server import listen, serve
    from appliance.app import Appliance
    from appliance.telemetry.logs import configure_logging

    os.umask(DAEMON_UMASK)  # whatever the shell's umask: state, KV files, workspaces stay private
    configure_logging(verbose=bool(getattr(args, "verbose", False)))
    cfg = load_config(args.config, state_dir=args.state_dir)
    server = cfg.server
    if args.host or args.port:
        server = msgspec.structs.replace(
            server, host=args.host or server.host, port=args.port or server.port
        )
        cfg = msgspec.structs.replace(cfg, server=server)
    if not is_loopback(server.host) and not _has_tokens(Path(cfg.state_dir)):
        raise ConfigError(
            f"refusing to listen on {server.host}, which is not a loopback address, without API tokens. "
            "Create one with `appliance token create NAME`, or bind to 127.0.0.1."
        )
    sockets = listen(server.host, server.port)  # a port in use fails before anything starts
    appliance = Appliance.from_config(cfg)
    if not args.no_fetch:
        fetch_defaults(appliance, cfg.models.defaults)
    app = create_app(appliance)
    print(
        f"appliance serving on http://{server.host}:{server.port} (state {cfg.state_dir})",
        flush=True,
    )
    return serve(appliance, app, server, sockets=sockets)


def _has_tokens(state_dir: Path) -> bool:
    """Whether the state directory's store holds at least one valid API token."""
    from appliance.store import Store

    with Store(state_dir) as store:
        return store.tokens.count_valid() > 0
