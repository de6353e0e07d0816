"""`appliance doctor`: check this box and say what to fix (exit 1 when something fails)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from appliance.host.doctor import CheckResult, run_doctor

_MARK = {"ok": "ok", "warning": "warning", "failure": "FAILURE"}


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "doctor", help="check the host: GPU, llama.cpp, sandboxes, disk, port, config"
    )
    p.add_argument(
        "--config", type=Path, help="config TOML (default ~/.config/appliance/config.toml)"
    )
    p.add_argument("--state-dir", help="state directory to check")
    p.add_argument("--json", action="store_true", help="print the checks as JSON")
    p.set_defaults(func=run)


def render(results: list[CheckResult]) -> str:
    width = max(len(r.name) for r in results)
    lines = []
    for r in results:
        lines.append(f"{_MARK[r.status]:8} {r.name:{width}}  {r.detail}")
        if r.fix:
            lines.append(f"{'':8} {'':{width}}  fix: {r.fix}")
    counts = {s: sum(r.status == s for r in results) for s in _MARK}
    lines.append(
        f"\n{counts['ok']} ok, {counts['warning']} warning(s), {counts['failure']} failure(s)"
    )
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    results = run_doctor(args.config, args.state_dir)
    if args.json:
        print(json.dumps([r.to_dict() for r in results], indent=2))
    else:
        print(render(results))
    return 1 if any(r.status == "failure" for r in results) else 0
