"""`appliance models`: list, load, unload, pin, add, fetch, pull, import and rm models."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from appliance.cli.main import add_client_args
from appliance.client import DaemonClient, calls
from appliance.client.format import size


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("models", help="see and steer models")
    msub = p.add_subparsers(dest="models_command", metavar="ACTION", required=True)
    ls = msub.add_parser("list", help="models, their state and memory")
    add_client_args(ls)
    ls.set_defaults(func=cmd_list)
    for name, helptext in (
        ("load", "load a model now"),
        ("unload", "unload a model now"),
        ("pin", "keep a model loaded"),
        ("unpin", "let a pinned model unload when idle"),
    ):
        c = msub.add_parser(name, help=helptext)
        c.add_argument("model")
        add_client_args(c)
        c.set_defaults(func=cmd_action, action=name)
    add = msub.add_parser(
        "add", help="add a GGUF model file (writes a profile to the config directory)"
    )
    add.add_argument("path", type=Path)
    add.add_argument("--id", help="model id (default: from the file name)")
    add.add_argument("--kind", choices=["chat", "embedding"], default="chat")
    add.add_argument(
        "--replace", action="store_true", help="re-point an existing model id at this file"
    )
    add.add_argument("--config", type=Path, help="config TOML")
    add.add_argument("--state-dir")
    add.set_defaults(func=cmd_add)
    fetch = msub.add_parser("fetch", help="fetch (and convert) models into the model store")
    fetch.add_argument("models", nargs="*", help="model ids (default: models.defaults)")
    fetch.add_argument("--config", type=Path, help="config TOML")
    fetch.add_argument("--state-dir")
    fetch.set_defaults(func=cmd_fetch)
    pull = msub.add_parser(
        "pull", help="download a GGUF into the model store and register it (through the daemon)"
    )
    pull.add_argument("source", help="url:URL, hf:OWNER/REPO:QUANT or hf:OWNER/REPO/FILE.gguf")
    pull.add_argument("--id", help="model id (default: from the file name)")
    pull.add_argument("--sha256", help="the file's sha256; the pull fails when it differs")
    add_client_args(pull)
    pull.set_defaults(func=cmd_pull)
    rm = msub.add_parser("rm", help="unload a model and remove its profile")
    rm.add_argument("model")
    rm.add_argument(
        "--files", action="store_true", help="delete its file too (when no other model uses it)"
    )
    add_client_args(rm)
    rm.set_defaults(func=cmd_rm)
    imp = msub.add_parser(
        "import", help="register the GGUFs Ollama, LM Studio or the HF cache hold, in place"
    )
    imp.add_argument(
        "--from", dest="origin", required=True, choices=["ollama", "lmstudio", "hf-cache"]
    )
    imp.add_argument("path", nargs="?", help="the tool's models folder (default: its usual one)")
    add_client_args(imp)
    imp.set_defaults(func=cmd_import)


def cmd_list(args: argparse.Namespace) -> int:
    models = DaemonClient(args.url, args.token).call(calls.models())
    now = time.time()
    print(
        f"{'MODEL':28} {'KIND':9} {'STATE':10} {'MEMORY':>10} {'ON DISK':>10} {'ORIGIN':8}"
        f" {'IDLE IN':>8} {'LOADS':>5}  LAST ERROR"
    )
    for m in models:
        idle = (
            f"{m.idle_deadline - now:.0f}s" if m.idle_deadline else ("pinned" if m.pinned else "-")
        )
        err = (m.last_error or "")[:60]
        print(
            f"{m.id:28} {m.kind:9} {m.state:10} {size(m.memory_bytes):>10}"
            f" {size(m.size_bytes):>10} {m.origin:8} {idle:>8} {m.load_count:>5}  {err}"
        )
    return 0


def cmd_action(args: argparse.Namespace) -> int:
    client = DaemonClient(args.url, args.token)
    if args.action in ("pin", "unpin"):
        m = client.call(calls.pin_model(args.model, args.action == "pin"))
    else:
        m = client.call(
            calls.load_model(args.model)
            if args.action == "load"
            else calls.unload_model(args.model)
        )
    extra = (
        f", load took {m.last_load_ms:.0f} ms" if args.action == "load" and m.last_load_ms else ""
    )
    print(f"{m.id}: {m.state}{' (pinned)' if m.pinned else ''}{extra}")
    return 0


def cmd_add(args: argparse.Namespace) -> int:
    from appliance.config import load_config
    from appliance.models.catalog import ModelCatalog

    cfg = load_config(args.config, state_dir=args.state_dir)
    prof = ModelCatalog.load(cfg).add_path(
        args.path, model_id=args.id, kind=args.kind, replace=args.replace
    )
    print(
        f"added model {prof.id} ({prof.kind}) from {prof.source}; a running daemon sees it after a restart"
    )
    return 0


def cmd_fetch(args: argparse.Namespace) -> int:
    from appliance.cli.progress import TerminalProgress
    from appliance.config import load_config
    from appliance.models.catalog import ModelCatalog

    cfg = load_config(args.config, state_dir=args.state_dir)
    catalog = ModelCatalog.load(cfg)
    for mid in args.models or cfg.models.defaults:
        bar = TerminalProgress()
        path = catalog.ensure_local(mid, progress=bar)
        bar.finish(f"{mid}: {path}")
    return 0


def cmd_pull(args: argparse.Namespace) -> int:
    from appliance.cli.progress import TerminalProgress

    client = DaemonClient(args.url, args.token)
    p = client.call(calls.pull_model(args.source, args.id, args.sha256))
    bar = TerminalProgress()
    try:
        while not p.finished:
            fraction = p.bytes / p.total if p.total else None
            of = f" of {size(p.total)}" if p.total else ""
            bar("download", fraction, f"{p.model}: {size(p.bytes)}{of} at {size(p.rate)}/s")
            time.sleep(0.2)
            p = client.call(calls.pull(p.id))
    except KeyboardInterrupt:
        p = client.call(calls.cancel_pull(p.id))
    if p.state != "done":
        bar.finish(f"{p.model}: pull {p.state}: {p.error or ''}".rstrip(": "))
        return 1
    bar("download", 1.0, f"{p.model}: {size(p.bytes)}")
    bar.finish(f"pulled {p.model} ({size(p.bytes)}); try: appliance chat --model {p.model}")
    return 0


def cmd_rm(args: argparse.Namespace) -> int:
    out = DaemonClient(args.url, args.token).call(calls.remove_model(args.model, args.files))
    print(f"removed {args.model}")
    for f in out.get("files_removed") or []:
        print(f"  deleted {f}")
    for f in out.get("files_kept") or []:
        print(f"  kept {f} ({out.get('note', '')})")
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    out = DaemonClient(args.url, args.token).call(calls.import_models(args.origin, args.path))
    for m in out.get("imported") or []:
        print(f"imported {m['id']} ({m['kind']}) from {m['path']}")
    for m in out.get("skipped") or []:
        print(f"skipped {m['id']}: {m['reason']}")
    if not out.get("imported") and not out.get("skipped"):
        print(f"no GGUF models found under {out.get('root')}")
    return 0
