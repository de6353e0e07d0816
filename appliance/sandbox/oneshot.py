"""One-shot runs: code and files in, one program run (compiled first if needed), results out.

A language with a REPL driver runs in a warm-pool sandbox when one fits (or a freshly started
driver sandbox otherwise): the code is written into the sandbox's workspace and one frame starts
it. Other languages get a fresh sandbox for the compile step and another for the run, both over
the same workspace. A compile failure ends the run with phase "compile" and the compiler's
output. The workspace is always removed at the end.

The files a run returns (`fetch_files`) are bounded twice: each file by the per-file transfer
limit and all of them together by `max_fetch_bytes`, checked against each file's size before it is
read. Names that lead to one file (`big`, `./big`, a symlink or a hard link to it) are the same
file: it is returned once, under the first name asked for, so aliases cannot multiply a response.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from appliance.errors import ApplianceError
from appliance.sandbox.batch import Artifact, restore
from appliance.sandbox.engine import SandboxEngine
from appliance.sandbox.errors import UploadTooLarge
from appliance.sandbox.limits import MiB, SandboxLimits
from appliance.sandbox.policy import WORKSPACE
from appliance.sandbox.pool import WarmPool
from appliance.sandbox.profiles import ResolvedLanguage
from appliance.sandbox.results import RunOutcome
from appliance.sandbox.workspace import Workspace, read_capped


@dataclass
class RunSpec:
    language: ResolvedLanguage
    code: bytes
    limits: SandboxLimits
    stdin: bytes = b""
    files: dict[str, bytes] = field(default_factory=dict)
    fetch: list[str] = field(default_factory=list)
    args: list[str] = field(default_factory=list)
    network: bool = False
    max_file_bytes: int = 64 * 1024 * 1024
    max_fetch_bytes: int = 64 * 1024 * 1024
    """All fetched files together."""
    command: list[str] | None = None
    """An image run's own argv (no code file is written, no profile command runs)."""


def write_inputs(workspace: Workspace, spec: RunSpec) -> None:
    total = len(spec.code)
    for path, data in spec.files.items():
        total += len(data)
        if total > spec.limits.workspace_mb * 1024 * 1024:
            raise UploadTooLarge(
                f"the files add up to more than the workspace limit of {spec.limits.workspace_mb} MB"
            )
        workspace.write_file(path, data)
    if spec.command is None:
        workspace.write_file(spec.language.profile.file, spec.code)


def fetch_outputs(workspace: Workspace, spec: RunSpec) -> dict[str, bytes]:
    """The requested files that exist after the run (missing ones are left out), each file once."""
    out: dict[str, bytes] = {}
    seen: set[tuple[int, int]] = set()
    total = 0
    for path in spec.fetch:
        try:
            fd = workspace.open_regular(path)
        except ApplianceError:  # missing or refused: not part of the result
            continue
        with os.fdopen(fd, "rb") as f:
            st = os.fstat(f.fileno())
            if (st.st_dev, st.st_ino) in seen:
                continue  # another name of a file already in the result
            seen.add((st.st_dev, st.st_ino))
            if st.st_size > spec.max_file_bytes:
                raise UploadTooLarge(
                    f"{path!r} is {st.st_size} bytes, above the {spec.max_file_bytes}-byte limit "
                    "of a file transfer (sandbox.max_file_mb)"
                )
            if total + st.st_size > spec.max_fetch_bytes:
                raise UploadTooLarge(
                    f"the files in fetch_files add up to more than {spec.max_fetch_bytes // MiB} "
                    f"MB, the limit of one response (sandbox.max_fetch_mb), at {path!r}; fetch "
                    "fewer or smaller files, or use a stateful sandbox and GET them one at a time"
                )
            out[path] = read_capped(
                f.fileno(), path, min(spec.max_file_bytes, spec.max_fetch_bytes - total)
            )
            total += len(out[path])
    return out


async def run_once(engine: SandboxEngine, pool: WarmPool | None, spec: RunSpec) -> RunOutcome:
    started = time.monotonic()
    lang = spec.language
    if lang.profile.repl and not spec.network and spec.command is None:
        # the pool holds host-toolchain sandboxes only
        pooled = pool is not None and lang.image is None
        sandbox = await pool.acquire(lang, spec.limits) if pool is not None and pooled else None
        if sandbox is None:
            sandbox = await engine.start_driver(lang, spec.limits)
        try:
            await _off_loop_if_large(write_inputs, sandbox.workspace, spec)
            outcome = await sandbox.run_script(
                f"{WORKSPACE}/{lang.profile.file}", spec.args, spec.stdin, spec.limits, started
            )
            if spec.fetch:
                outcome.files = await asyncio.to_thread(fetch_outputs, sandbox.workspace, spec)
            return outcome
        finally:
            await sandbox.destroy(background=True)

    # the compile step shares the workspace: the larger of the two quotas holds for both
    size = max(spec.limits.workspace_mb, lang.compile_limits.workspace_mb)
    ws_limits = replace(spec.limits, workspace_mb=size)
    workspace = await asyncio.to_thread(engine.new_workspace, "run-", ws_limits)
    try:
        await asyncio.to_thread(write_inputs, workspace, spec)
        if spec.command is not None:
            outcome = await engine.run_command(
                lang,
                workspace,
                spec.command,
                spec.limits,
                stdin=spec.stdin,
                network=spec.network,
                started=started,
            )
        else:
            outcome = await compile_and_run(engine, lang, workspace, spec, started)
        if outcome.phase == "run":
            outcome.files = await asyncio.to_thread(fetch_outputs, workspace, spec)
        return outcome
    finally:
        await asyncio.to_thread(workspace.destroy)


async def run_compiled(
    engine: SandboxEngine, spec: RunSpec, artifacts: list[Artifact]
) -> RunOutcome:
    """A run of a program compiled earlier (a batch case): the compiled workspace's files, then
    the case's own, in a fresh workspace and sandbox."""
    started = time.monotonic()
    workspace = await asyncio.to_thread(engine.new_workspace, "run-", spec.limits)
    try:
        await asyncio.to_thread(_write_case, workspace, spec, artifacts)
        return await engine.run_command(
            spec.language,
            workspace,
            spec.language.run_argv(spec.limits, spec.args),
            spec.limits,
            stdin=spec.stdin,
            network=False,
            started=started,
        )
    finally:
        await asyncio.to_thread(workspace.destroy)


def _write_case(workspace: Workspace, spec: RunSpec, artifacts: list[Artifact]) -> None:
    restore(workspace, artifacts)
    for path, data in spec.files.items():
        workspace.write_file(path, data)


SMALL_INPUT = 256 * 1024


async def _off_loop_if_large(
    fn: Callable[[Workspace, RunSpec], None], ws: Workspace, spec: RunSpec
) -> None:
    """A few small files are written faster right here than through a thread hop."""
    if (
        len(spec.code) + sum(len(d) for d in spec.files.values()) <= SMALL_INPUT
        and len(spec.files) <= 8
    ):
        fn(ws, spec)
    else:
        await asyncio.to_thread(fn, ws, spec)


async def compile_and_run(
    engine: SandboxEngine,
    lang: ResolvedLanguage,
    workspace: Workspace,
    spec: RunSpec,
    started: float,
) -> RunOutcome:
    """The compile step (if the language has one), then the program, in fresh sandboxes."""
    if lang.profile.compile:
        built = await engine.run_command(
            lang,
            workspace,
            lang.compile_argv(lang.compile_limits),
            lang.compile_limits,
            network=False,
        )
        if built.status != "ok":
            built.phase = "compile"
            built.duration_ms = round((time.monotonic() - started) * 1000, 2)
            if built.reason is None:
                built.reason = (
                    "compilation failed; the compiler's messages are in stdout and stderr"
                )
            return built
    return await engine.run_command(
        lang,
        workspace,
        lang.run_argv(spec.limits, spec.args),
        spec.limits,
        stdin=spec.stdin,
        network=spec.network,
        started=time.monotonic(),
    )
