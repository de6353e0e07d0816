"""`appliance token create|list|revoke`: API tokens, kept hashed in the state directory's store.

It works on the store directly (not through the daemon), so it also works before the first start
and on a box whose daemon refuses to start for want of a token. Changes take effect in a running
daemon at once. Run as root against a state directory owned by the service user (`sudo appliance
token create ...` on an installed box), it switches to that user first, so the database files
stay the daemon's.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from appliance.config import load_config
from appliance.store import Store


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("token", help="create, list and revoke API tokens")
    tsub = p.add_subparsers(dest="token_command", metavar="ACTION", required=True)
    create = tsub.add_parser("create", help="create a token (shown once)")
    create.add_argument("name", help="a name to recognise it by (e.g. laptop, grafana)")
    ls = tsub.add_parser("list", help="tokens and when they were last used")
    ls.add_argument("--valid", action="store_true", help="leave revoked tokens out")
    revoke = tsub.add_parser("revoke", help="revoke a token by name or id")
    revoke.add_argument("ref", help="token name or id (see `appliance token list`)")
    for c in (create, ls, revoke):
        c.add_argument("--config", type=Path, help="config TOML")
        c.add_argument("--state-dir", help="state directory (default: from the config)")
    create.set_defaults(func=cmd_create)
    ls.set_defaults(func=cmd_list)
    revoke.set_defaults(func=cmd_revoke)


def _open(args: argparse.Namespace) -> Store:
    cfg = load_config(args.config, state_dir=args.state_dir)
    state = Path(cfg.state_dir)
    _become_owner(state)
    return Store(state)


def _become_owner(state: Path) -> None:
    """As root, act as the owner of an existing state directory (the service user)."""
    if os.geteuid() != 0 or not state.exists():
        return
    st = state.stat()
    if st.st_uid != 0:
        os.setgid(st.st_gid)
        os.setuid(st.st_uid)


def _when(ts: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(ts)) if ts else "-"


def cmd_create(args: argparse.Namespace) -> int:
    with _open(args) as store:
        new = store.tokens.create(args.name)
    print(f"created token {new.token.name!r} ({new.token.id}). It is shown only this once:\n")
    print(f"    {new.plain}\n")
    print(
        "Clients send it as `Authorization: Bearer <token>` (OpenAI SDKs: api_key=<token>; "
        "the appliance CLI: --token or APPLIANCE_TOKEN)."
    )
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    with _open(args) as store:
        tokens = store.tokens.list(include_revoked=not args.valid)
    if not tokens:
        print("no tokens; create one with `appliance token create NAME`")
        return 0
    print(f"{'NAME':20} {'ID':28} {'PREFIX':12} {'CREATED':16} {'LAST USED':16} REVOKED")
    for t in tokens:
        print(
            f"{t.name:20} {t.id:28} {t.prefix:12} {_when(t.created):16} {_when(t.last_used):16} "
            f"{_when(t.revoked) if t.revoked else ''}"
        )
    return 0


def cmd_revoke(args: argparse.Namespace) -> int:
    with _open(args) as store:
        t = store.tokens.revoke(args.ref)
    print(f"revoked {t.name!r} ({t.id}); requests with it now get 401")
    return 0
