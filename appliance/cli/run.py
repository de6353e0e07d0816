"""`appliance run LANGUAGE FILE|-`: run a program in a sandbox from the terminal.

With `--image REF` it runs in that OCI image's userland; `--image REF --command -- ARGV...` runs
an argv there instead of a program.

It sends the program to the daemon's `POST /api/run` (the same path the HTTP API and agents use)
and prints its output, so what works here works there. `--local` runs it in this process instead,
for machines without a running daemon. The exit status is the program's own, or 124 for a
timeout and 137 for a program stopped at its memory or another limit.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import logging
import sys
import tempfile
from pathlib import Path
from typing import Any

import msgspec

from appliance.errors import ApplianceError, InvalidRequest

EXIT_FOR_STATUS = {"timeout": 124, "oom": 137, "killed": 137}


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from appliance.cli.main import add_client_args

    p = sub.add_parser(
        "run",
        help="run a program in a sandbox",
        description="Run a program in a sandbox. Program arguments go after `--`.",
    )
    p.add_argument("language", nargs="?", help="language (see --languages)")
    p.add_argument("file", nargs="?", help="source file, or - to read the program from stdin")
    p.add_argument("args", nargs="*", help="arguments for the program (after --)")
    p.add_argument("--languages", action="store_true", help="list the languages and exit")
    p.add_argument("--stdin", metavar="FILE", help="file given to the program as its stdin")
    p.add_argument("--timeout", help="wall-clock limit, like 10s or 2m")
    p.add_argument("--memory", help="memory limit, like 256M or 1G")
    p.add_argument(
        "--network", action="store_true", help="allow network access (if the daemon allows it)"
    )
    p.add_argument(
        "-f",
        "--file",
        dest="files",
        action="append",
        default=[],
        metavar="LOCAL[:PATH]",
        help="copy a local file into the workspace (at PATH, default its name); repeatable",
    )
    p.add_argument(
        "--fetch",
        action="append",
        default=[],
        metavar="PATH",
        help="copy this workspace file back after the run; repeatable",
    )
    p.add_argument("--out-dir", default=".", help="where fetched files are written (default .)")
    p.add_argument(
        "--cases",
        metavar="FILE.jsonl",
        help="run the program against test cases (a JSON object per line: stdin, args, "
        "expected_stdout, compare, timeout_s) with POST /api/run/batch; exit 0 when all pass",
    )
    p.add_argument(
        "--image",
        metavar="REF",
        help="run in this OCI image's userland (appliance images list) instead of the host's",
    )
    p.add_argument(
        "--command",
        action="store_true",
        help="with --image: the arguments are an argv to run in the image, not LANGUAGE FILE "
        "(appliance run --image REF --command -- cat /etc/os-release)",
    )
    p.add_argument("--json", action="store_true", help="print the whole result as JSON")
    p.add_argument("--local", action="store_true", help="run in this process, without a daemon")
    p.add_argument("--config", type=Path, help="config TOML for --local")
    add_client_args(p)
    p.set_defaults(func=run)


def _read_source(args: argparse.Namespace) -> tuple[str, str | None]:
    if args.file == "-":
        code = sys.stdin.read()
        stdin = None
    else:
        path = Path(args.file)
        if not path.is_file():
            raise InvalidRequest(f"{path} is not a file; give a source file, or - for stdin")
        code = path.read_text(encoding="utf-8")
        stdin = None if sys.stdin is None or sys.stdin.isatty() else sys.stdin.read()
    if args.stdin:
        stdin = Path(args.stdin).read_text(encoding="utf-8")
    return code, stdin


def _files(specs: list[str]) -> dict[str, str]:
    out = {}
    for spec in specs:
        local, _, dest = spec.partition(":")
        path = Path(local)
        if not path.is_file():
            raise InvalidRequest(f"--file {spec}: {path} is not a file")
        out[dest or path.name] = base64.b64encode(path.read_bytes()).decode("ascii")
    return out


def build_request(args: argparse.Namespace) -> dict[str, Any]:
    from appliance.sandbox.limits import parse_duration_s, parse_size_mb

    if args.command:
        argv = [a for a in (args.language, args.file, *args.args) if a is not None]
        stdin = Path(args.stdin).read_text(encoding="utf-8") if args.stdin else None
        body: dict[str, Any] = {"image": args.image, "command": argv}
    else:
        code, stdin = _read_source(args)
        body = {"language": args.language, "code": code, "args": list(args.args)}
        if args.image:
            body["image"] = args.image
    if stdin is not None:
        body["stdin"] = stdin
    if args.timeout:
        body["timeout_s"] = parse_duration_s(args.timeout)
    if args.memory:
        body["memory_mb"] = parse_size_mb(args.memory)
    if args.network:
        body["network"] = True
    if args.files:
        body["files"] = _files(args.files)
    if args.fetch:
        body["fetch_files"] = list(args.fetch)
    return body


async def _run_local(args: argparse.Namespace, body: dict[str, Any] | None) -> Any:
    """A SandboxService of our own, with no pool and a private workspace root."""
    from appliance.config import load_config
    from appliance.sandbox.service import RunRequest, SandboxService

    if not getattr(args, "verbose", False):
        logging.getLogger("appliance.sandbox").setLevel(logging.WARNING)
    cfg = load_config(args.config)
    sandbox_cfg = msgspec.structs.replace(cfg.sandbox, pool={})
    cfg = msgspec.structs.replace(cfg, sandbox=sandbox_cfg)
    with tempfile.TemporaryDirectory(prefix="appliance-run-") as tmp:
        cfg = msgspec.structs.replace(cfg, state_dir=tmp)
        service = SandboxService.from_config(cfg)
        if body is None:
            return msgspec.to_builtins(await service.languages())
        await service.start()
        try:
            if service.unavailable:
                raise ApplianceError(service.unavailable)
            result = await service.run(msgspec.convert(body, RunRequest))
            return msgspec.to_builtins(result)
        finally:
            await service.stop()


def _print_languages(langs: list[dict[str, Any]]) -> None:
    for lang in langs:
        mark = "yes" if lang["available"] else "no "
        kind = (
            "compiled" if lang["compiled"] else ("interpreter" if lang["interpreter"] else "script")
        )
        print(f"{lang['name']:<12} {mark}  {kind:<11}  {lang['detail']}")


def run(args: argparse.Namespace) -> int:
    if not getattr(args, "verbose", False):
        logging.getLogger("httpx").setLevel(logging.WARNING)  # the program's output stays clean
    if args.languages:
        if args.local:
            langs = asyncio.run(_run_local(args, None))
        else:
            from appliance.client import DaemonClient

            langs = DaemonClient(args.url, args.token).get("/api/sandboxes/languages")
        _print_languages(langs)
        return 0
    if args.command and not args.image:
        raise InvalidRequest("--command runs an argv inside an image: give --image REF too")
    if args.command and not args.language:
        raise InvalidRequest("give the argv to run: appliance run --image REF --command -- ls /")
    if not args.command and (not args.language or not args.file):
        raise InvalidRequest(
            "give a language and a source file: appliance run python main.py (or - for stdin)"
        )
    body = build_request(args)
    if args.cases:
        return run_cases(args, body)
    if args.local:
        result = asyncio.run(_run_local(args, body))
    else:
        from appliance.client import DaemonClient

        result = DaemonClient(args.url, args.token).post("/api/run", json=body)
    return show(result, args)


def read_cases(path: str) -> list[dict[str, Any]]:
    cases = []
    for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            case = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InvalidRequest(
                f"{path}:{n} is not JSON ({exc.msg}); write one object a line"
            ) from None
        if not isinstance(case, dict):
            raise InvalidRequest(f"{path}:{n} must be a JSON object (stdin, args, ...)")
        cases.append(case)
    return cases


def run_cases(args: argparse.Namespace, body: dict[str, Any]) -> int:
    """Print a line per case and a summary; the exit status is 0 when every case passed."""
    from appliance.client import DaemonClient

    if args.local:
        raise InvalidRequest("--cases needs a running daemon; drop --local")
    batch: dict[str, Any] = {
        k: body[k] for k in ("language", "code", "files", "memory_mb") if k in body
    }
    batch["cases"] = read_cases(args.cases)
    result = DaemonClient(args.url, args.token).post("/api/run/batch", json=batch)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        built = result.get("compile")
        if built and built["status"] != "ok":
            sys.stderr.write(built["stdout"] + built["stderr"])
            print(f"[compile {built['status']}: {built.get('reason') or ''}]", file=sys.stderr)
        for c in result["cases"]:
            verdict = "pass" if c["passed"] else "FAIL"
            why = f"  {c['reason']}" if c.get("reason") and not c["passed"] else ""
            print(
                f"case {c['index']:>4}  {verdict}  {c['status']:<8} {c['duration_ms']:8.1f} ms{why}"
            )
        print(
            f"{result['passed']} passed, {result['failed']} failed in {result['duration_ms']:.0f} ms"
        )
    return 0 if result["failed"] == 0 else 1


def show(result: dict[str, Any], args: argparse.Namespace) -> int:
    out_dir = Path(args.out_dir)
    if result.get("files"):
        out_dir.mkdir(parents=True, exist_ok=True)
    for name, encoded in (result.get("files") or {}).items():
        target = out_dir / Path(name).name
        target.write_bytes(base64.b64decode(encoded))
        print(f"fetched {name} -> {target}", file=sys.stderr)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        sys.stdout.write(result["stdout"])
        sys.stdout.flush()
        sys.stderr.write(result["stderr"])
    status = result["status"]
    if status != "ok" and not args.json:
        where = " while compiling" if result.get("phase") == "compile" else ""
        reason = f": {result['reason']}" if result.get("reason") else ""
        print(f"[{status}{where}{reason}]", file=sys.stderr)
    if status in EXIT_FOR_STATUS:
        return EXIT_FOR_STATUS[status]
    if result.get("phase") == "compile":
        return 1
    code = result.get("exit_code")
    return int(code) if code is not None else 1
