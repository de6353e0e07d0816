"""Run one sandboxed process to its end under its limits, and say how it ended.

`supervise` owns a started SandboxProcess: it feeds stdin, collects stdout and stderr (capped),
watches the wall clock, the output volume and the workspace size, kills the whole sandbox when a
limit is crossed, reaps it, and classifies the end (results.classify). The CPU, memory, process
and file-size limits are enforced by the kernel (rlimits or the cgroup), and so is the
workspace's size when it is a tmpfs of its own (quota.py); this loop only notices the ones the
kernel cannot: time, output volume and, for a workspace that is a plain directory, its size.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from appliance.sandbox.aio import read_some, write_all
from appliance.sandbox.limits import SandboxLimits
from appliance.sandbox.process import ProcessExit, SandboxProcess
from appliance.sandbox.results import KillReason, ProcessFacts, RunOutcome, classify
from appliance.sandbox.streams import CappedBuffer
from appliance.sandbox.workspace import MAX_WORKSPACE_ENTRIES, Workspace

log = logging.getLogger("appliance.sandbox")

OUTPUT_KILL_FACTOR = 8
"""A stream may produce this many times its cap (at least 8 MiB) before the program is stopped."""
WORKSPACE_CHECK_S = 0.25
DRAIN_TIMEOUT_S = 5.0


async def _pump(fd: int, buf: CappedBuffer, overflow: int, on_overflow: asyncio.Event) -> None:
    while True:
        chunk = await read_some(fd)
        if not chunk:
            return
        buf.feed(chunk)
        if buf.total > overflow:
            on_overflow.set()


async def _feed_stdin(fd: int | None, data: bytes, proc: SandboxProcess) -> None:
    if fd is None:
        return
    try:
        if data:
            await write_all(fd, data)
    except (BrokenPipeError, ConnectionResetError):
        pass  # the program did not read all of its input; that is its business
    finally:
        if proc.popen.stdin is not None:
            with contextlib.suppress(OSError):
                proc.popen.stdin.close()


async def _watch_workspace(workspace: Workspace, limits: SandboxLimits, hit: asyncio.Event) -> None:
    cap = limits.workspace_mb * 1024 * 1024
    while True:
        await asyncio.sleep(WORKSPACE_CHECK_S)
        size, entries = await asyncio.to_thread(workspace.usage, cap)
        if size > cap or entries > MAX_WORKSPACE_ENTRIES:
            hit.set()
            return


async def _sample_memory(proc: SandboxProcess) -> None:
    delay = 0.005
    while True:
        proc.sample_peak()
        await asyncio.sleep(delay)
        delay = min(0.1, delay * 2)


async def supervise(
    proc: SandboxProcess,
    *,
    limits: SandboxLimits,
    stdin: bytes = b"",
    workspace: Workspace | None = None,
    oom_patterns: tuple[bytes, ...] = (),
    started: float | None = None,
) -> RunOutcome:
    """Wait for `proc` to end (killing it at a limit) and return its classified outcome."""
    started = time.monotonic() if started is None else started
    # One sample before anything awaits: a pooled interpreter is alive and waiting for its code
    # now, and on a loaded host the sampling task may first run only after a short program ended.
    proc.sample_peak()
    out, err = CappedBuffer(limits.output_bytes), CappedBuffer(limits.output_bytes)
    overflow = max(OUTPUT_KILL_FACTOR * limits.output_bytes, 8 * 1024 * 1024)
    too_much_output, workspace_full = asyncio.Event(), asyncio.Event()
    pumps = [
        asyncio.ensure_future(_pump(proc.stdout_fd, out, overflow, too_much_output)),
        asyncio.ensure_future(_pump(proc.stderr_fd, err, overflow, too_much_output)),
    ]
    helpers = [
        asyncio.ensure_future(_feed_stdin(proc.stdin_fd, stdin, proc)),
        asyncio.ensure_future(_sample_memory(proc)),
    ]
    if workspace is not None and not workspace.enforced:
        helpers.append(asyncio.ensure_future(_watch_workspace(workspace, limits, workspace_full)))
    output_wait: asyncio.Future[Any] = asyncio.ensure_future(too_much_output.wait())
    workspace_wait: asyncio.Future[Any] = asyncio.ensure_future(workspace_full.wait())
    exit_future: asyncio.Future[Any] = proc.wait()

    killed_for: KillReason | None = None
    process_limit_hit = False
    remaining = max(0.0, limits.timeout_s - (time.monotonic() - started))
    try:
        done, _ = await asyncio.wait(
            {exit_future, output_wait, workspace_wait},
            timeout=remaining,
            return_when=asyncio.FIRST_COMPLETED,
        )
        if exit_future not in done:
            if output_wait in done:
                killed_for = "output"
            elif workspace_wait in done:
                killed_for = "workspace"
            else:
                killed_for = "timeout"
                process_limit_hit = proc.count_processes() >= limits.nproc - 1
            proc.kill()
        result: ProcessExit = await exit_future
        duration_ms = (time.monotonic() - started) * 1000
        _, pending = await asyncio.wait(pumps, timeout=DRAIN_TIMEOUT_S)
        for stuck in pending:  # only if something outside the sandbox still holds the pipe
            stuck.cancel()
    finally:
        for waiter in (*helpers, output_wait, workspace_wait):
            waiter.cancel()
        for task in pumps:
            if not task.done():
                task.cancel()
        proc.kill()
    if exit_future.done() and not exit_future.cancelled():
        await asyncio.gather(*pumps, *helpers, return_exceptions=True)

    peak_mb = proc.peak_kb(result) / 1024
    cgroup = proc.cgroup
    if cgroup is not None:
        peak_mb = cgroup.peak_mb() or peak_mb
    facts = ProcessFacts(
        returncode=result.returncode,
        killed_for=killed_for,
        process_limit_hit=process_limit_hit,
        cgroup_oom=cgroup.oom_killed() if cgroup else False,
        cgroup_pids_max=cgroup.pids_max_hit() if cgroup else False,
        peak_memory_mb=peak_mb,
        stderr_tail=bytes(err.data[-4096:]),
    )
    status, exit_code, sig, reason = classify(facts, limits, oom_patterns)
    if reason is None and status == "error" and workspace is not None and workspace.full():
        quota_mb = (workspace.quota_bytes or 0) // (1024 * 1024)
        reason = (
            f"the workspace is full: its quota ({quota_mb} MB, {MAX_WORKSPACE_ENTRIES} files) "
            "made further writes fail with ENOSPC"
        )
    stdout, stdout_truncated = out.take()
    stderr, stderr_truncated = err.take()
    return RunOutcome(
        status=status,
        exit_code=exit_code,
        signal=sig,
        stdout=stdout,
        stderr=stderr,
        stdout_truncated=stdout_truncated,
        stderr_truncated=stderr_truncated,
        duration_ms=round(duration_ms, 2),
        peak_memory_mb=round(peak_mb, 2),
        reason=reason,
        cpu_ms=round(max(0.0, result.cpu_s - proc.cpu_baseline_s) * 1000, 2),
    )
