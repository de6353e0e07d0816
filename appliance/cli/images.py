"""`appliance images`: pull, import, list, inspect, remove and prune sandbox images; log in.

Everything but `login` goes to the daemon through appliance.client: the daemon owns the store
(`<state>/oci/`). A pull is started (202) and its progress polled from `GET /api/images/pulls`
and drawn as the CLI's progress bar. `import` uploads a `docker save` archive or an OCI layout
(a tar, or a directory, which is tarred on the fly). `login` writes the registry's credentials
into the Docker/Podman auth.json that the daemon reads (sandbox.registry_auth_file, else
$REGISTRY_AUTH_FILE, else ~/.config/containers/auth.json).
"""

from __future__ import annotations

import argparse
import base64
import getpass
import json
import os
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from appliance.cli.main import add_client_args
from appliance.client import DaemonClient, calls
from appliance.client.format import size
from appliance.errors import ApplianceError, InvalidRequest


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("images", help="OCI images that sandboxes run in")
    isub = p.add_subparsers(dest="images_command", metavar="ACTION", required=True)
    pull = isub.add_parser("pull", help="pull an image from a registry")
    pull.add_argument("ref", help="[registry/]name[:tag][@sha256:...]")
    imp = isub.add_parser("import", help="import a `docker save` archive or an OCI layout")
    imp.add_argument("path", type=Path, help="a tar archive, or an OCI layout directory")
    imp.add_argument("--name", help="the reference to give the (first) image")
    ls = isub.add_parser("list", help="images in the store")
    insp = isub.add_parser("inspect", help="an image's record and config (JSON)")
    insp.add_argument("ref")
    rm = isub.add_parser("rm", help="remove an image (its layers go when nothing else uses them)")
    rm.add_argument("ref")
    prune = isub.add_parser("prune", help="delete unused layers, blobs and interrupted downloads")
    for c, func in (
        (pull, cmd_pull),
        (imp, cmd_import),
        (ls, cmd_list),
        (insp, cmd_inspect),
        (rm, cmd_rm),
        (prune, cmd_prune),
    ):
        add_client_args(c)
        c.set_defaults(func=func)
    login = isub.add_parser("login", help="store credentials for a registry (auth.json)")
    login.add_argument("registry", help="host[:port]")
    login.add_argument("-u", "--username", required=True)
    login.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    login.add_argument("--auth-file", type=Path, help="the auth.json to write")
    login.set_defaults(func=cmd_login)


def cmd_pull(args: argparse.Namespace) -> int:
    from appliance.cli.progress import TerminalProgress

    client = DaemonClient(args.url, args.token)
    started = client.call(calls.pull_image(args.ref))
    ref = started["ref"]
    bar = TerminalProgress()
    t0 = time.monotonic()
    while True:
        status = next((p for p in client.call(calls.image_pulls()) if p["ref"] == ref), started)
        total, done = status.get("bytes_total") or 0, status.get("bytes_done") or 0
        if status["status"] == "pulling":
            bar("pull", done / total if total else None, f"{size(done)} / {size(total)}")
            time.sleep(0.2)
            continue
        if status["status"] == "failed":
            bar.finish()
            raise ApplianceError(f"pull of {ref} failed: {status['error']}")
        bar.finish(f"{ref}: {status['digest']} ({size(total)}, {time.monotonic() - t0:.1f} s)")
        return 0


def _chunks(path: Path) -> Iterator[bytes]:
    with path.open("rb") as f:
        while chunk := f.read(1024 * 1024):
            yield chunk


def cmd_import(args: argparse.Namespace) -> int:
    path: Path = args.path
    if not path.exists():
        raise InvalidRequest(
            f"{path} does not exist; give a tar archive or an OCI layout directory"
        )
    client = DaemonClient(args.url, args.token)
    params = {"name": args.name} if args.name else None
    if path.is_dir():
        with tempfile.TemporaryDirectory() as tmp:
            archive = Path(tmp) / "layout.tar"
            with tarfile.open(archive, "w") as tar:
                for item in sorted(path.rglob("*")):
                    tar.add(item, arcname=str(item.relative_to(path)), recursive=False)
            result = client.upload("/api/images/import", _chunks(archive), params=params)
    else:
        result = client.upload("/api/images/import", _chunks(path), params=params)
    for img in result["images"]:
        print(f"imported {', '.join(img['refs'])} ({img['digest'][:19]}, {size(img['size'])})")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    found = DaemonClient(args.url, args.token).call(calls.images())
    print(f"{'REFERENCE':48} {'DIGEST':19} {'SIZE':>10} {'LAYERS':>6}")
    for img in found:
        for ref in img["refs"] or ["<none>"]:
            print(f"{ref:48} {img['digest'][:19]} {size(img['size']):>10} {img['layers']:>6}")
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    info: Any = DaemonClient(args.url, args.token).call(calls.image(args.ref))
    print(json.dumps(info, indent=2))
    return 0


def cmd_rm(args: argparse.Namespace) -> int:
    removed = DaemonClient(args.url, args.token).call(calls.remove_image(args.ref))
    for ref in removed:
        print(f"removed {ref}")
    return 0


def cmd_prune(args: argparse.Namespace) -> int:
    result = DaemonClient(args.url, args.token).call(calls.prune_images())
    print(f"freed {size(result['freed_bytes']) if result['freed_bytes'] else '0 B'}")
    return 0


def default_auth_file() -> Path:
    configured = os.environ.get("REGISTRY_AUTH_FILE")
    return Path(configured) if configured else Path.home() / ".config/containers/auth.json"


def cmd_login(args: argparse.Namespace) -> int:
    password = sys.stdin.readline().rstrip("\n") if args.password_stdin else getpass.getpass()
    path: Path = args.auth_file or default_auth_file()
    data: dict[str, Any] = {}
    if path.is_file():
        try:
            data = json.loads(path.read_text())
        except ValueError as exc:
            raise InvalidRequest(f"{path} is not JSON ({exc}); fix or remove it") from None
    token = base64.b64encode(f"{args.username}:{password}".encode()).decode()
    data.setdefault("auths", {})[args.registry] = {"auth": token}
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path.with_suffix(".tmp"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=2)
    os.replace(path.with_suffix(".tmp"), path)
    print(
        f"credentials for {args.registry} stored in {path}; the daemon reads them on its next pull"
    )
    return 0
