"""The daemon's side of a driver sandbox: a sandbox whose first process is a REPL driver.

The drivers (python_driver.py, node_driver.js in this directory) run inside the sandbox; their
docstrings describe the protocol. `DriverSandbox` starts out waiting for its ready frame, and then
serves exactly one owner: either one script (`run_script`, the warm-pool fast path of a one-shot
run) or a sequence of cells (`enter_repl` + `exec_cell`, a stateful sandbox). It is destroyed
after; nothing of one owner ever reaches another.
"""

from __future__ import annotations

import asyncio
import json
import logging
import resource
import secrets
import struct
import time
from pathlib import Path
from typing import Any

from appliance.sandbox.aio import close_quietly, read_exact, read_some, set_nonblocking, write_all
from appliance.sandbox.errors import SandboxUnavailable
from appliance.sandbox.limits import SandboxLimits, rlimits_for
from appliance.sandbox.process import SandboxProcess
from appliance.sandbox.results import KillReason, ProcessFacts, RunOutcome, Status, classify
from appliance.sandbox.runner import supervise
from appliance.sandbox.streams import MarkerSplitter
from appliance.sandbox.workspace import Workspace, remove_later

log = logging.getLogger("appliance.sandbox")

DRIVER_FILES_DIR = Path(__file__).resolve().parent
READY_TIMEOUT_S = 30.0
INTERRUPT_GRACE_S = 2.0
MARKER_WAIT_S = 2.0


def encode_frame(obj: dict[str, Any]) -> bytes:
    body = json.dumps(obj).encode()
    return struct.pack(">I", len(body)) + body


def fits(limits: SandboxLimits, started_with: SandboxLimits) -> bool:
    """Whether a sandbox started under `started_with` can run a request under `limits`.

    Hard rlimits of a running process can only go down (raising needs CAP_SYS_RESOURCE, which
    even a root daemon may lack), so a pre-started sandbox serves requests at or below the
    limits it started with.
    """
    a, b = limits, started_with
    return (
        a.memory_mb + a.address_space_extra_mb <= b.memory_mb + b.address_space_extra_mb
        and a.nproc <= b.nproc
        and a.file_size_mb <= b.file_size_mb
        and a.nofile <= b.nofile
        and a.cpu_seconds <= b.cpu_seconds
        and a.tmp_mb <= b.tmp_mb
    )


class DriverSandbox:
    def __init__(
        self,
        process: SandboxProcess,
        workspace: Workspace,
        limits: SandboxLimits,
        result_fd: int,
        *,
        language: str,
        oom_patterns: tuple[bytes, ...] = (),
    ) -> None:
        self.process = process
        self.workspace = workspace
        self.limits = limits
        self.language = language
        self.oom_patterns = oom_patterns
        self._result_fd = result_fd
        set_nonblocking(result_fd)
        self.created = time.monotonic()
        self._splitters: tuple[MarkerSplitter, MarkerSplitter] | None = None
        self._segment_ready = asyncio.Event()
        self._pumps: list[asyncio.Future[None]] = []
        self.cells = 0
        self._overflowed = False

    @property
    def alive(self) -> bool:
        return not self.process.finished

    async def wait_ready(self) -> None:
        try:
            frame = await asyncio.wait_for(self._read_frame(), READY_TIMEOUT_S)
        except (EOFError, TimeoutError) as exc:
            outcome = await supervise(self.process, limits=self.limits, started=time.monotonic())
            detail = outcome.stderr.decode(errors="replace").strip()[-2000:]
            raise SandboxUnavailable(
                f"the {self.language} driver did not start ({outcome.reason or outcome.status}): "
                f"{detail or 'no output'}"
            ) from exc
        if not frame.get("ready"):
            raise SandboxUnavailable(
                f"the {self.language} driver answered {frame!r} instead of ready"
            )

    def serves(self, limits: SandboxLimits) -> bool:
        return fits(limits, self.limits)

    def apply_limits(self, limits: SandboxLimits, *, keep_cpu_hard: bool = False) -> None:
        cgroup = self.process.cgroup
        rl = rlimits_for(limits, cgroup=cgroup is not None, cpu_used_s=self.process.cpu_seconds())
        if keep_cpu_hard:
            soft, _ = rl[resource.RLIMIT_CPU]
            hard = resource.prlimit(self.process.inner_pid, resource.RLIMIT_CPU)[1]
            rl[resource.RLIMIT_CPU] = (min(soft, hard), hard)
        self.process.set_rlimits(rl)
        if cgroup is not None:
            cgroup.update(limits)

    # --- protocol ---------------------------------------------------------------------------------

    async def _read_frame(self) -> dict[str, Any]:
        (n,) = struct.unpack(">I", await read_exact(self._result_fd, 4))
        result: dict[str, Any] = json.loads(await read_exact(self._result_fd, n))
        return result

    # --- one-shot -----------------------------------------------------------------------------------

    async def run_script(
        self, path: str, args: list[str], stdin: bytes, limits: SandboxLimits, started: float
    ) -> RunOutcome:
        """Run one program file to its end; this sandbox is finished afterwards."""
        self.apply_limits(limits)
        self.limits = limits
        self.process.cpu_baseline_s = self.process.cpu_seconds()
        close_quietly(self._result_fd)
        self._result_fd = -1
        frame = encode_frame({"op": "run", "path": path, "args": args})
        return await supervise(
            self.process,
            limits=limits,
            stdin=frame + stdin,
            workspace=self.workspace,
            oom_patterns=self.oom_patterns,
            started=started,
        )

    # --- stateful -----------------------------------------------------------------------------------

    async def enter_repl(self) -> None:
        assert self.process.stdin_fd is not None
        await write_all(self.process.stdin_fd, encode_frame({"op": "repl"}))
        cap = self.limits.output_bytes
        self._splitters = (MarkerSplitter(cap), MarkerSplitter(cap))
        self._pumps = [
            asyncio.ensure_future(self._pump(self.process.stdout_fd, self._splitters[0])),
            asyncio.ensure_future(self._pump(self.process.stderr_fd, self._splitters[1])),
        ]

    async def _pump(self, fd: int, splitter: MarkerSplitter) -> None:
        while True:
            chunk = await read_some(fd)
            if not chunk:
                self._segment_ready.set()
                return
            splitter.feed(chunk)
            if splitter.pending_bytes > max(8 * self.limits.output_bytes, 8 * 1024 * 1024):
                self._overflowed = True
                self.process.kill()  # endless output: the cell cannot be cut short any other way
            if splitter.done is not None:
                self._segment_ready.set()

    async def _segments(self, deadline: float) -> None:
        assert self._splitters is not None
        while not all(s.done for s in self._splitters) and time.monotonic() < deadline:
            if all(p.done() for p in self._pumps):
                return
            self._segment_ready.clear()
            try:
                await asyncio.wait_for(
                    self._segment_ready.wait(), max(0.01, deadline - time.monotonic())
                )
            except TimeoutError:
                return

    async def exec_cell(self, code: str, limits: SandboxLimits) -> RunOutcome:
        """Run one cell in the persistent interpreter; the sandbox may be dead afterwards."""
        assert self._splitters is not None and self.process.stdin_fd is not None
        started = time.monotonic()
        cpu_before = self.process.cpu_seconds()
        self.cells += 1
        marker = f"\x00appliance-cell-{secrets.token_hex(12)}\x00"
        for s in self._splitters:
            s.expect(marker.encode())
        self.apply_limits(limits, keep_cpu_hard=True)
        frame = encode_frame(
            {
                "op": "exec",
                "code": code,
                "marker": marker,
                "timeout_ms": int(limits.timeout_s * 1000),
            }
        )
        answer: dict[str, Any] | None = None
        killed_for: KillReason | None = None
        try:
            await write_all(self.process.stdin_fd, frame)
            reader = asyncio.ensure_future(self._read_frame())
            done, _ = await asyncio.wait({reader}, timeout=limits.timeout_s)
            if not done:
                self.process.interrupt()
                killed_for = "timeout"
                done, _ = await asyncio.wait({reader}, timeout=INTERRUPT_GRACE_S)
            if done:
                answer = reader.result()
            else:
                reader.cancel()
        except (EOFError, BrokenPipeError, ConnectionResetError):
            answer = None
        if answer is not None:
            await self._segments(time.monotonic() + MARKER_WAIT_S)
        out_seg, err_seg = (
            s.done if s.done is not None else s.drain_unmarked() for s in self._splitters
        )
        duration_ms = round((time.monotonic() - started) * 1000, 2)
        if answer is None:  # the driver is gone or stuck: the sandbox ends here
            exited = self.process.wait()
            if killed_for is None:  # it died on its own: let bwrap report how
                await asyncio.wait({exited}, timeout=1.0)
            self.process.kill()
            ended = await exited
            if self._overflowed:
                killed_for = "output"
            ended_as, exit_code, sig, reason = classify(
                ProcessFacts(
                    returncode=ended.returncode,
                    killed_for=killed_for,
                    peak_memory_mb=self.process.peak_kb(ended) / 1024,
                    stderr_tail=err_seg.data[-4096:],
                ),
                limits,
                self.oom_patterns,
            )
            reason = (
                (reason or "")
                + ("; " if reason else "")
                + "the interpreter ended, its variables are lost"
            )
            return RunOutcome(
                ended_as,
                exit_code,
                sig,
                out_seg.data,
                err_seg.data,
                out_seg.truncated,
                err_seg.truncated,
                duration_ms,
                round(self.process.peak_kb(ended) / 1024, 2),
                reason,
            )
        status: Status
        if answer.get("interrupted"):
            status, reason = (
                "timeout",
                f"the cell ran past its {limits.timeout_s:g}s timeout and was interrupted",
            )
        elif answer.get("ok"):
            status, reason = "ok", None
        else:
            status, reason = "error", None
        return RunOutcome(
            status=status,
            exit_code=0 if status == "ok" else 1,
            signal=None,
            stdout=out_seg.data,
            stderr=err_seg.data,
            stdout_truncated=out_seg.truncated,
            stderr_truncated=err_seg.truncated,
            duration_ms=duration_ms,
            peak_memory_mb=round(int(answer.get("maxrss_kb") or 0) / 1024, 2),
            cpu_ms=round(max(0.0, self.process.cpu_seconds() - cpu_before) * 1000, 2),
            reason=reason,
            result=answer.get("result"),
        )

    async def destroy(self, *, keep_workspace: bool = False, background: bool = False) -> None:
        """Kill the sandbox and remove its workspace (`background`: removal need not be awaited)."""
        for task in self._pumps:
            task.cancel()
        close_quietly(self._result_fd)
        self._result_fd = -1
        await self.process.close()
        if keep_workspace:
            return
        if background:
            remove_later(self.workspace)
        else:
            await asyncio.to_thread(self.workspace.destroy)
