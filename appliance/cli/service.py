"""`appliance service install|uninstall|status`: run the appliance as a systemd service."""

from __future__ import annotations

import argparse

from appliance.config import DEFAULT_PORT
from appliance.host.service import DEFAULT_USER, ServiceInstaller


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("service", help="install, remove or inspect the systemd service")
    ssub = p.add_subparsers(dest="service_command", metavar="ACTION", required=True)
    inst = ssub.add_parser("install", help="create the user, config and unit; enable and start it")
    inst.add_argument(
        "--host", default="127.0.0.1", help="bind address (non-loopback needs --token)"
    )
    inst.add_argument("--port", type=int, default=DEFAULT_PORT)
    inst.add_argument(
        "--user", default=DEFAULT_USER, help="system user to run as (created if missing)"
    )
    inst.add_argument(
        "--token", metavar="NAME", help="also create a first API token with this name"
    )
    inst.add_argument("--no-start", action="store_true", help="enable but do not start it now")
    inst.set_defaults(func=cmd_install)
    rm = ssub.add_parser("uninstall", help="stop and remove the service (data kept unless --purge)")
    rm.add_argument(
        "--purge", action="store_true", help="also delete /etc/appliance, the data and the user"
    )
    rm.add_argument("--user", default=DEFAULT_USER)
    rm.set_defaults(func=cmd_uninstall)
    st = ssub.add_parser("status", help="is the service installed, enabled and running")
    st.set_defaults(func=cmd_status)


def cmd_install(args: argparse.Namespace) -> int:
    steps = ServiceInstaller(user=args.user).install(
        host=args.host, port=args.port, start=not args.no_start, token=args.token
    )
    print("\n".join(steps))
    return 0


def cmd_uninstall(args: argparse.Namespace) -> int:
    print("\n".join(ServiceInstaller(user=args.user).uninstall(purge=args.purge)))
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    status = ServiceInstaller().status()
    for key, value in status.items():
        print(f"{key:8} {value}")
    return 0 if status["active"] == "active" else 3
