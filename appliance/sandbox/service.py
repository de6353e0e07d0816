"""SandboxService: one-shot runs, stateful sandboxes and their files, as the API offers them.

The service owns the sandbox runtime's life (preflight, warm pool, idle reaper), checks requests
(languages, limits against the daemon's maxima, network policy, base64 and sizes), queues
one-shot runs beyond `sandbox.max_concurrent` (failing fast past `sandbox.queue_size`), admits
every sandbox against the memory budget for its owner (an API client or an agent, see
appliance.sandbox.admission), and converts the runtime's results into the response structs. When the host cannot run sandboxes
(no bwrap, user namespaces blocked), the daemon still starts and every sandbox request answers
503 with the preflight's fix.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import collections
import contextlib
import dataclasses
import logging
import os
import secrets
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Literal

import msgspec

from appliance.config import Config, SandboxConfig, shipped_profiles_dir
from appliance.errors import ApplianceError, ConfigError, InvalidRequest
from appliance.sandbox.admission import (
    HOST_SHARE,
    Owner,
    SandboxAdmission,
    footprint_mb,
    host_memory_mb,
)
from appliance.sandbox.batch import (
    Artifact,
    ArtifactTooLarge,
    BatchCase,
    BatchRequest,
    BatchResult,
    CaseResult,
    CompileResult,
    output_matches,
    snapshot,
)
from appliance.sandbox.bwrap import locate_bwrap
from appliance.sandbox.cgroup import CgroupDelegate
from appliance.sandbox.engine import EngineConfig, SandboxEngine
from appliance.sandbox.errors import (
    BatchTooLarge,
    LanguageNotFound,
    NetworkNotAllowed,
    SandboxQueueFull,
    SandboxUnavailable,
    UploadTooLarge,
)
from appliance.sandbox.identity import SandboxIdentity
from appliance.sandbox.images.languages import ImageLanguages
from appliance.sandbox.images.service import ImageService
from appliance.sandbox.limits import LimitCeiling, MiB, SandboxLimits, apply_request
from appliance.sandbox.manager import SandboxManager, StatefulSandbox
from appliance.sandbox.oneshot import RunSpec, run_compiled, run_once, write_inputs
from appliance.sandbox.pool import WarmPool
from appliance.sandbox.preflight import run_preflight
from appliance.sandbox.profiles import ProfileCatalog, ResolvedLanguage
from appliance.sandbox.results import RunOutcome
from appliance.sandbox.workspace import split_path, wait_for_removals
from appliance.telemetry.recorder import Telemetry

log = logging.getLogger("appliance.sandbox")


# --- request and response bodies ---------------------------------------------------------------


class RunRequest(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    language: str = ""
    code: str | None = None
    """The program (with `language`)."""
    image: str | None = None
    """Run in this image's root filesystem (a reference or digest from GET /api/images)
    instead of on the host's toolchains: with `command`, or with `language` + `code` (the
    language's interpreter looked up inside the image)."""
    command: list[str] = msgspec.field(default_factory=list)
    """With `image`: the argv to run (after the image's Entrypoint); empty runs its Cmd."""
    stdin: str | None = None
    files: dict[str, str] = msgspec.field(default_factory=dict)
    """Files to put in the workspace first: relative path -> base64 content."""
    fetch_files: list[str] = msgspec.field(default_factory=list)
    """Workspace files to return after the run (missing ones are left out)."""
    timeout_s: float | None = None
    memory_mb: int | None = None
    network: bool = False
    args: list[str] = msgspec.field(default_factory=list)


class RunResult(msgspec.Struct, kw_only=True):
    status: Literal["ok", "error", "timeout", "oom", "killed"]
    exit_code: int | None
    signal: int | None
    stdout: str
    stderr: str
    stdout_truncated: bool
    stderr_truncated: bool
    duration_ms: float
    peak_memory_mb: float
    cpu_ms: float = 0.0
    """CPU time the program used (user + system, its finished child processes included)."""
    files: dict[str, bytes] = msgspec.field(default_factory=dict)
    """The files of fetch_files that exist, base64 in JSON (encoded straight into the response,
    with no intermediate copy of each file as a base64 string)."""
    reason: str | None = None
    """Which limit ended the run, in words, when one did."""
    phase: Literal["compile", "run"] = "run"
    result: str | None = None
    """Stateful cells: the repr of the cell's final expression."""
    restarted: bool = False
    """Stateful cells: the interpreter had died and was started afresh (variables lost)."""


class CreateSandboxRequest(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    language: str | None = None
    """Required, except with `image` (then "sh" when unset)."""
    image: str | None = None
    """The image whose root filesystem the sandbox runs in (its files persist in /workspace)."""
    timeout_s: float | None = None
    """Default timeout of each exec."""
    memory_mb: int | None = None
    network: bool = False


class ExecRequest(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    code: str
    timeout_s: float | None = None
    stdin: str | None = None
    """Languages without an interpreter session only (bash, C, ...)."""
    args: list[str] = msgspec.field(default_factory=list)


class SandboxInfo(msgspec.Struct, kw_only=True):
    id: str
    language: str
    image: str | None = None
    interpreter: bool
    """Whether variables persist between execs (a live REPL), not only files."""
    busy: bool
    execs: int
    created_at: float
    idle_s: float
    expires_in_s: float
    timeout_s: float
    memory_mb: int
    network: bool


class FileInfo(msgspec.Struct, kw_only=True):
    path: str
    type: str
    size: int


class LanguageOut(msgspec.Struct, kw_only=True):
    name: str
    title: str
    aliases: list[str]
    available: bool
    compiled: bool
    interpreter: bool
    pooled: int
    detail: str


def _text(data: bytes) -> str:
    return data.decode("utf-8", errors="replace")


def to_result(outcome: RunOutcome, *, restarted: bool = False) -> RunResult:
    return RunResult(
        status=outcome.status,
        exit_code=outcome.exit_code,
        signal=outcome.signal,
        stdout=_text(outcome.stdout),
        stderr=_text(outcome.stderr),
        stdout_truncated=outcome.stdout_truncated,
        stderr_truncated=outcome.stderr_truncated,
        duration_ms=outcome.duration_ms,
        peak_memory_mb=outcome.peak_memory_mb,
        cpu_ms=outcome.cpu_ms,
        files=outcome.files,
        reason=outcome.reason,
        phase=outcome.phase,
        result=outcome.result,
        restarted=restarted,
    )


class RunQueue:
    """At most `slots` runs at once; waiting runs served round-robin between flows.

    A flow is one batch (its cases) or one single run, so a client's batch of a thousand cases
    takes its turn beside every other waiting request instead of ahead of them. At most `size`
    runs may wait (more are refused with 503 + Retry-After), counting only `bounded` waits: a
    batch bounds its own waiting cases.
    """

    def __init__(self, slots: int, size: int) -> None:
        self.slots = max(1, slots)
        self.size = size
        self.running = 0
        self._flows: collections.OrderedDict[str, collections.deque[asyncio.Future[None]]] = (
            collections.OrderedDict()
        )
        self._bounded = 0

    @property
    def waiting(self) -> int:
        return sum(len(q) for q in self._flows.values())

    @contextlib.asynccontextmanager
    async def slot(self, flow: str | None = None, *, bounded: bool = True) -> AsyncIterator[None]:
        if self.running < self.slots and not self._flows:
            self.running += 1
        else:
            if bounded and self._bounded >= self.size:
                raise SandboxQueueFull(
                    f"{self.waiting} runs are already waiting for a sandbox; retry shortly "
                    "(the operator can raise sandbox.queue_size or sandbox.max_concurrent)",
                    retry_after=1,
                )
            await self._wait(flow, bounded)
        try:
            yield
        finally:
            self.running -= 1
            self._grant()

    async def _wait(self, flow: str | None, bounded: bool) -> None:
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        key = flow if flow is not None else f"run-{id(turn)}"
        self._flows.setdefault(key, collections.deque()).append(turn)
        self._bounded += bounded
        try:
            await turn
        except asyncio.CancelledError:
            if turn.done() and not turn.cancelled():  # granted as we were cancelled: pass it on
                self.running -= 1
                self._grant()
            else:
                queue = self._flows.get(key)
                if queue is not None and turn in queue:
                    queue.remove(turn)
                    if not queue:
                        del self._flows[key]
            raise
        finally:
            self._bounded -= bounded

    def _grant(self) -> None:
        while self.running < self.slots and self._flows:
            key, queue = next(iter(self._flows.items()))
            turn = queue.popleft()
            if queue:
                self._flows.move_to_end(key)  # the flow goes behind every other one
            else:
                del self._flows[key]
            if turn.done():
                continue
            self.running += 1
            turn.set_result(None)


def default_concurrency(budget_mb: int, cpus: int | None = None) -> int:
    """sandbox.max_concurrent when it is 0: two runs per CPU (a run waits on its start-up and
    output as much as it computes), one per 256 MB of the sandboxes' memory, at least 2."""
    cpus = cpus or len(os.sched_getaffinity(0))
    return max(2, min(2 * cpus, budget_mb // 256))


def _skipped(index: int, reason: str) -> CaseResult:
    return CaseResult(
        index=index,
        status="skipped",
        exit_code=None,
        stdout="",
        stderr="",
        stdout_truncated=False,
        stderr_truncated=False,
        duration_ms=0.0,
        cpu_ms=0.0,
        peak_memory_mb=0.0,
        reason=reason,
        passed=False,
    )


def _case_result(index: int, r: RunResult, case: BatchCase) -> CaseResult:
    passed = r.status == "ok" and (
        case.expected_stdout is None
        or output_matches(r.stdout, case.expected_stdout, case.compare, case.tolerance)
    )
    return CaseResult(
        index=index,
        status=r.status,
        exit_code=r.exit_code,
        stdout=r.stdout,
        stderr=r.stderr,
        stdout_truncated=r.stdout_truncated,
        stderr_truncated=r.stderr_truncated,
        duration_ms=r.duration_ms,
        cpu_ms=r.cpu_ms,
        peak_memory_mb=r.peak_memory_mb,
        reason=r.reason
        if r.status != "ok" or passed
        else "the output differs from expected_stdout",
        passed=passed,
    )


def _batch_result(
    language: str, compiled: CompileResult | None, cases: list[CaseResult], started: float
) -> BatchResult:
    passed = sum(1 for c in cases if c.passed)
    return BatchResult(
        language=language,
        compile=compiled,
        cases=cases,
        passed=passed,
        failed=len(cases) - passed,
        duration_ms=round((time.monotonic() - started) * 1000, 2),
    )


class SandboxService:
    def __init__(
        self,
        config: SandboxConfig,
        *,
        catalog: ProfileCatalog,
        root: Path,
        identity: SandboxIdentity | None = None,
        telemetry: Telemetry | None = None,
        images: ImageService | None = None,
    ) -> None:
        self.config = config
        self.telemetry = telemetry
        self.images = images or ImageService(config, root.parent / "oci", telemetry)
        self.in_image = ImageLanguages(catalog, self.images)
        self._running_images: collections.Counter[str] = collections.Counter()
        """Digests of the images one-shot runs are running in now, with how many runs each."""
        self.images.in_use = self._images_in_use
        self.catalog = catalog
        self.root = root
        self._identity = identity
        self.ceiling = LimitCeiling(config.max_timeout_s, config.max_memory_mb)
        self.max_file_bytes = config.max_file_mb * 1024 * 1024
        if not 0 <= config.agent_reserve_fraction < 1:
            raise ConfigError(
                f"must be at least 0 and below 1 (got {config.agent_reserve_fraction})",
                key="sandbox.agent_reserve_fraction",
            )
        if config.memory_budget_mb < 0:
            raise ConfigError(
                "must be 0 (measured) or a size in MB", key="sandbox.memory_budget_mb"
            )
        budget_mb = config.memory_budget_mb or int(host_memory_mb() * HOST_SHARE)
        self.queue = RunQueue(
            config.max_concurrent or default_concurrency(budget_mb), config.queue_size
        )
        self.admission = SandboxAdmission(
            budget_mb,
            agent_share=config.agent_reserve_fraction,
            max_stateful=config.max_sandboxes,
        )
        self.engine: SandboxEngine | None = None
        self.pool: WarmPool | None = None
        self.manager: SandboxManager | None = None
        self.unavailable: str | None = "the sandbox service has not started yet"
        for name in config.pool:
            try:
                catalog.canonical(name)
            except LanguageNotFound:
                raise ConfigError(
                    f"unknown language {name!r}; use one of {', '.join(sorted(catalog.profiles))}",
                    key=f"sandbox.pool.{name}",
                ) from None

    @classmethod
    def from_config(cls, config: Config, telemetry: Telemetry | None = None) -> SandboxService:
        dirs = [shipped_profiles_dir() / "sandboxes", *map(Path, config.sandbox.profile_dirs)]
        if config.config_dir:
            dirs.append(Path(config.config_dir) / "sandboxes")
        catalog = ProfileCatalog.load(dirs)
        return cls(
            config.sandbox,
            catalog=catalog,
            root=Path(config.state_dir) / "sandboxes",
            telemetry=telemetry,
        )

    # --- lifecycle ------------------------------------------------------------------------------------

    async def start(self) -> None:
        report = await asyncio.to_thread(run_preflight, bwrap_setting=self.config.bwrap)
        if not report.ok:
            self.unavailable = report.summary()
            log.warning("%s", self.unavailable)
            return
        try:
            identity = self._identity or SandboxIdentity.for_host(
                sandbox_uid=self.config.sandbox_uid, sandbox_gid=self.config.sandbox_gid
            )
            cgroups = CgroupDelegate.detect() if self.config.cgroups else None
            engine = SandboxEngine(
                EngineConfig(
                    locate_bwrap(self.config.bwrap),
                    self.root,
                    identity,
                    cgroups,
                    seccomp=self.config.seccomp,
                    workspace_quota=self.config.workspace_quota,
                ),
                self.catalog,
            )
        except ApplianceError as exc:
            self.unavailable = exc.message
            log.warning("sandboxes unavailable: %s", exc.message)
            return
        stale = await asyncio.to_thread(engine.clean_stale_workspaces)
        if stale:
            log.info("removed %d workspaces left by an earlier run", stale)
        try:
            await engine.start()
        except ApplianceError as exc:
            self.unavailable = exc.message
            log.warning("sandboxes unavailable: %s", exc.message)
            return
        self.engine = engine
        if any(v > 0 for v in self.config.pool.values()):
            self.pool = WarmPool(engine, self.config.pool, max_cpu_s=self.config.max_timeout_s)
            await self.pool.start()
        self.manager = SandboxManager(
            engine, self.pool, idle_ttl_s=self.config.idle_ttl_s, admission=self.admission
        )
        await self.manager.start()
        self.unavailable = None
        log.info(
            "sandboxes ready (bwrap %s, %s, cgroups %s, workspaces %s)",
            engine.bwrap,
            f"root; code runs as uid {identity.host_uid}"
            if identity.daemon_is_root
            else "unprivileged",
            "delegated" if cgroups else "not used, rlimits",
            "tmpfs with kernel-enforced quotas"
            if engine.workspaces_in_ram
            else f"polled ({engine.quota_problem})",
        )

    async def stop(self) -> None:
        await self.images.stop()
        if self.manager is not None:
            await self.manager.stop()
        if self.pool is not None:
            await self.pool.stop()
        await wait_for_removals()
        if self.engine is not None:
            await asyncio.to_thread(self.engine.stop)
        self.engine, self.pool, self.manager = None, None, None
        self.unavailable = "the sandbox service has stopped"

    def _ready(self) -> tuple[SandboxEngine, SandboxManager]:
        if self.engine is None or self.manager is None:
            raise SandboxUnavailable(self.unavailable or "sandboxes are not available")
        return self.engine, self.manager

    # --- checks -------------------------------------------------------------------------------------

    async def _language(self, name: str) -> ResolvedLanguage:
        image = self.catalog.get(name).image
        if image:  # a language that lives in an image, not on the host
            return await self.in_image.resolve(image, name)
        # the first use runs the toolchain's probes (subprocesses): off the event loop
        known = self.catalog.resolved(name)
        return known if known is not None else await asyncio.to_thread(self.catalog.resolve, name)

    def _limits(
        self, lang: ResolvedLanguage, timeout_s: float | None, memory_mb: int | None
    ) -> SandboxLimits:
        return apply_request(
            lang.limits, timeout_s=timeout_s, memory_mb=memory_mb, ceiling=self.ceiling
        )

    def _network(self, asked: bool) -> bool:
        if asked and not self.config.allow_network:
            raise NetworkNotAllowed(
                "network access inside sandboxes is off on this appliance; ask without "
                "`network`, or an operator can set sandbox.allow_network = true",
                param="network",
            )
        return asked

    def _bytes(self, what: str, data: bytes) -> bytes:
        if len(data) > self.max_file_bytes:
            raise UploadTooLarge(
                f"{what} is {len(data)} bytes, above the limit of {self.config.max_file_mb} MB "
                "(sandbox.max_file_mb)"
            )
        return data

    def _decode_files(self, files: dict[str, str]) -> dict[str, bytes]:
        out = {}
        for path, encoded in files.items():
            try:
                data = base64.b64decode(encoded, validate=True)
            except (binascii.Error, ValueError):
                raise InvalidRequest(
                    f"files[{path!r}] is not valid base64; encode each file's bytes as base64",
                    param="files",
                ) from None
            out[path] = self._bytes(f"files[{path!r}]", data)
        return out

    def _fetch_list(self, paths: list[str]) -> list[str]:
        """`fetch_files` checked before anything runs: absolute and climbing paths refused, at
        most sandbox.max_fetch_files, one entry per spelling of a path (`a` and `./a` are one)."""
        if len(paths) > self.config.max_fetch_files:
            raise InvalidRequest(
                f"fetch_files lists {len(paths)} paths; at most {self.config.max_fetch_files} "
                "may be fetched from one run (sandbox.max_fetch_files)",
                param="fetch_files",
            )
        spelled: dict[tuple[str, ...], str] = {}
        for path in paths:
            spelled.setdefault(tuple(split_path(path)), path)
        return list(spelled.values())

    # --- one-shot -----------------------------------------------------------------------------------

    async def _run_target(self, req: RunRequest) -> tuple[ResolvedLanguage, list[str] | None]:
        """The language to run in, and an image run's own argv (None for code runs)."""
        if req.language and req.code is None:
            raise InvalidRequest(
                "`code` is missing: send the program to run with `language`", param="code"
            )
        if req.image is None:
            if req.command:
                raise InvalidRequest(
                    "command runs an argv inside an image; give `image` too, or send "
                    "`language` + `code`",
                    param="command",
                )
            if not req.language:
                raise InvalidRequest("give `language` and `code` (or `image`)", param="language")
            return await self._language(req.language), None
        if req.command and req.language:
            raise InvalidRequest(
                "give either `command` or `language` + `code` with an image, not both",
                param="command",
            )
        lang = await self.in_image.resolve(req.image, req.language)
        return lang, None if req.language else self.in_image.argv(lang, req.command)

    def _images_in_use(self) -> list[str]:
        stateful = self.manager.sandboxes.values() if self.manager else ()
        held = [sb.language.image.digest for sb in stateful if sb.language.image]
        return [*held, *self._running_images.elements()]

    async def run(self, req: RunRequest, *, owner: Owner = "client") -> RunResult:
        engine, _ = self._ready()
        lang, command = await self._run_target(req)
        spec = RunSpec(
            language=lang,
            code=self._bytes("code", (req.code or "").encode()),
            limits=self._limits(lang, req.timeout_s, req.memory_mb),
            stdin=self._bytes("stdin", (req.stdin or "").encode()),
            files=self._decode_files(req.files),
            fetch=self._fetch_list(req.fetch_files),
            args=list(req.args),
            network=self._network(req.network),
            max_file_bytes=self.max_file_bytes,
            max_fetch_bytes=self.config.max_fetch_mb * MiB,
            command=command,
        )
        digest = lang.image.digest if lang.image else None
        if digest:
            self._running_images[digest] += 1
        try:
            outcome = await self._admitted(engine, spec, owner, None)
        finally:
            if digest:
                self._running_images[digest] -= 1
                if not self._running_images[digest]:
                    del self._running_images[digest]
        return self._observed(lang.name, to_result(outcome))

    # --- batches of test cases ---------------------------------------------------------------------

    async def run_batch(self, req: BatchRequest, *, owner: Owner = "client") -> BatchResult:
        """One program against many cases (appliance.sandbox.batch): compiled once, each case in
        a fresh sandbox, up to the run queue's slots at once, taking turns with other clients."""
        engine, _ = self._ready()
        if not req.cases:
            raise InvalidRequest("cases must list at least one case", param="cases")
        if len(req.cases) > self.config.max_batch_cases:
            raise BatchTooLarge(
                f"the batch has {len(req.cases)} cases; at most {self.config.max_batch_cases} "
                "fit in one (sandbox.max_batch_cases): split it into several batches"
            )
        lang = await self._language(req.language)
        code = self._bytes("code", req.code.encode())
        shared = self._decode_files(req.files)
        specs = [
            RunSpec(
                language=lang,
                code=code,
                limits=self._limits(lang, case.timeout_s, req.memory_mb),
                stdin=self._bytes(f"cases[{i}].stdin", (case.stdin or "").encode()),
                files={**shared, **self._decode_files(case.files)},
                args=list(case.args),
                max_file_bytes=self.max_file_bytes,
            )
            for i, case in enumerate(req.cases)
        ]
        started = time.monotonic()
        flow = f"batch-{secrets.token_hex(6)}"
        compiled: CompileResult | None = None
        artifacts: list[Artifact] | None = None
        if lang.profile.compile:
            compiled, artifacts = await self._compile_once(
                engine, lang, code, shared, req, flow, owner
            )
            if compiled.status != "ok":
                skipped = [_skipped(i, "the program did not compile") for i in range(len(specs))]
                return _batch_result(lang.name, compiled, skipped, started)
        results: list[CaseResult | None] = [None] * len(specs)
        failed = asyncio.Event()
        gate = asyncio.Semaphore(self.queue.slots)  # bounds this batch's waiting cases

        async def one(i: int) -> None:
            async with gate:
                if req.stop_on_failure and failed.is_set():
                    results[i] = _skipped(i, "an earlier case failed (stop_on_failure)")
                    return
                outcome = await self._admitted(
                    engine, specs[i], owner, flow, bounded=False, artifacts=artifacts
                )
                case = req.cases[i]
                result = _case_result(i, self._observed(lang.name, to_result(outcome)), case)
                results[i] = result
                if not result.passed:
                    failed.set()

        await asyncio.gather(*(one(i) for i in range(len(specs))))
        done = [r if r is not None else _skipped(i, "not run") for i, r in enumerate(results)]
        return _batch_result(lang.name, compiled, done, started)

    async def _compile_once(
        self,
        engine: SandboxEngine,
        lang: ResolvedLanguage,
        code: bytes,
        shared: dict[str, bytes],
        req: BatchRequest,
        flow: str,
        owner: Owner,
    ) -> tuple[CompileResult, list[Artifact] | None]:
        limits = apply_request(
            lang.compile_limits,
            timeout_s=req.compile_timeout_s,
            memory_mb=None,
            ceiling=self.ceiling,
        )
        spec = RunSpec(language=lang, code=code, limits=limits, files=shared)
        need = footprint_mb(limits, workspace_in_ram=engine.workspaces_in_ram)
        async with self.queue.slot(flow, bounded=False):
            reservation = self.admission.admit(need, owner, stateful=False)
            workspace = await asyncio.to_thread(engine.new_workspace, "run-", limits)
            try:
                await asyncio.to_thread(write_inputs, workspace, spec)
                t0 = time.monotonic()
                built = await engine.run_command(
                    lang, workspace, lang.compile_argv(limits), limits, network=False
                )
                result = CompileResult(
                    status=built.status,
                    stdout=built.stdout.decode("utf-8", errors="replace"),
                    stderr=built.stderr.decode("utf-8", errors="replace"),
                    duration_ms=round((time.monotonic() - t0) * 1000, 2),
                    reason=built.reason
                    or (
                        None
                        if built.status == "ok"
                        else "compilation failed; the compiler's messages are in stdout and stderr"
                    ),
                )
                if built.status != "ok":
                    return result, None
                try:
                    artifacts = await asyncio.to_thread(
                        snapshot, workspace, limits.workspace_mb * MiB
                    )
                except ArtifactTooLarge as exc:
                    result.status, result.reason = "error", str(exc)
                    return result, None
                return result, artifacts
            finally:
                await asyncio.to_thread(workspace.destroy)
                self.admission.release(reservation)

    async def _admitted(
        self,
        engine: SandboxEngine,
        spec: RunSpec,
        owner: Owner,
        flow: str | None,
        *,
        bounded: bool = True,
        artifacts: list[Artifact] | None = None,
    ) -> RunOutcome:
        """One run, in its turn of the queue and within the memory budget."""
        lang = spec.language
        need = footprint_mb(
            spec.limits,
            workspace_in_ram=engine.workspaces_in_ram,
            compile_limits=lang.compile_limits if lang.profile.compile and not artifacts else None,
        )
        async with self.queue.slot(flow, bounded=bounded):
            reservation = self.admission.admit(need, owner, stateful=False)
            try:
                if artifacts is not None:
                    return await run_compiled(engine, spec, artifacts)
                return await run_once(engine, self.pool, spec)
            finally:
                self.admission.release(reservation)

    def _observed(self, language: str, result: RunResult) -> RunResult:
        """Metrics, usage, trace span and event of a finished run (appliance.telemetry)."""
        if self.telemetry is not None:
            self.telemetry.sandbox_run(
                language,
                result.status,
                duration_s=result.duration_ms / 1000.0,
                cpu_s=result.cpu_ms / 1000.0,
            )
        return result

    async def languages(self) -> list[LanguageOut]:
        infos = await asyncio.to_thread(self.catalog.describe)
        for i, info in enumerate(infos):
            if self.catalog.profiles[info.name].image:
                available, detail = await self.in_image.describe(info.name)
                infos[i] = dataclasses.replace(info, available=available, detail=detail)
        pooled = self.config.pool
        return [
            LanguageOut(
                name=i.name,
                title=i.title,
                aliases=i.aliases,
                available=i.available,
                compiled=i.compiled,
                interpreter=i.stateful_repl,
                pooled=pooled.get(i.name, 0),
                detail=i.detail,
            )
            for i in infos
        ]

    # --- stateful -----------------------------------------------------------------------------------

    def _info(self, sb: StatefulSandbox) -> SandboxInfo:
        assert self.manager is not None
        idle = sb.idle_for()
        return SandboxInfo(
            id=sb.id,
            language=sb.language.name,
            image=sb.language.image.name if sb.language.image else None,
            interpreter=sb.driver is not None,
            busy=sb.busy,
            execs=sb.execs,
            created_at=sb.created_at,
            idle_s=round(idle, 3),
            expires_in_s=round(max(0.0, self.manager.idle_ttl_s - idle), 3),
            timeout_s=sb.limits.timeout_s,
            memory_mb=sb.limits.memory_mb,
            network=sb.network,
        )

    async def create(self, req: CreateSandboxRequest, *, owner: Owner = "client") -> SandboxInfo:
        """A stateful sandbox for `owner`: "agent" for agents' tools, which draw on the share of
        memory and of the sandbox count that API clients cannot take."""
        _, manager = self._ready()
        if req.image is not None:
            lang = await self.in_image.resolve(req.image, req.language or "sh")
        elif not req.language:
            raise InvalidRequest(
                "`language` is missing: name the sandbox's language (GET "
                "/api/sandboxes/languages), or give an `image`",
                param="language",
            )
        else:
            lang = await self._language(req.language)
        limits = self._limits(lang, req.timeout_s, req.memory_mb)
        network = self._network(req.network)
        info = self._info(await manager.create(lang, limits, network=network, owner=owner))
        if self.telemetry is not None:
            self.telemetry.events.publish(
                "sandbox.created", sandbox=info.id, language=info.language
            )
        return info

    def list_sandboxes(self) -> list[SandboxInfo]:
        _, manager = self._ready()
        return [self._info(sb) for sb in manager.sandboxes.values()]

    def get(self, sandbox_id: str) -> SandboxInfo:
        _, manager = self._ready()
        return self._info(manager.get(sandbox_id))

    async def exec(self, sandbox_id: str, req: ExecRequest) -> RunResult:
        _, manager = self._ready()
        sb = manager.get(sandbox_id)
        if sb.driver is not None and (req.stdin or req.args):
            raise InvalidRequest(
                f"cells of a {sb.language.name} sandbox run in a live interpreter and take no "
                "stdin or args; put input in a workspace file instead",
                param="stdin" if req.stdin else "args",
            )
        limits = sb.limits
        if req.timeout_s is not None:
            limits = apply_request(
                limits, timeout_s=req.timeout_s, memory_mb=None, ceiling=self.ceiling
            )
        code = self._bytes("code", req.code.encode()).decode()
        outcome, restarted = await manager.exec(
            sandbox_id, code, limits=limits, stdin=(req.stdin or "").encode(), args=list(req.args)
        )
        return self._observed(sb.language.name, to_result(outcome, restarted=restarted))

    async def delete(self, sandbox_id: str) -> None:
        _, manager = self._ready()
        await manager.delete(sandbox_id)
        if self.telemetry is not None:
            self.telemetry.events.publish("sandbox.destroyed", sandbox=sandbox_id)

    # --- files --------------------------------------------------------------------------------------

    def check_upload(self, sandbox_id: str, path: str) -> None:
        """Refuse an upload to an unknown sandbox or a bad path before its body is read."""
        _, manager = self._ready()
        manager.get(sandbox_id)
        split_path(path)

    async def put_file(self, sandbox_id: str, path: str, data: bytes) -> FileInfo:
        _, manager = self._ready()
        sb = manager.get(sandbox_id)
        self._bytes(f"the upload of {path!r}", data)
        used, _ = await asyncio.to_thread(sb.workspace.usage)
        if used + len(data) > sb.limits.workspace_mb * 1024 * 1024:
            raise UploadTooLarge(
                f"the workspace would grow past its {sb.limits.workspace_mb} MB limit; delete files "
                "first (or create the sandbox with a smaller data set)"
            )
        await asyncio.to_thread(sb.workspace.write_file, path, data)
        return FileInfo(path=path, type="file", size=len(data))

    async def get_file(self, sandbox_id: str, path: str) -> bytes:
        _, manager = self._ready()
        sb = manager.get(sandbox_id)
        return await asyncio.to_thread(sb.workspace.read_file, path, self.max_file_bytes)

    async def list_files(self, sandbox_id: str) -> list[FileInfo]:
        _, manager = self._ready()
        sb = manager.get(sandbox_id)
        entries = await asyncio.to_thread(sb.workspace.list_files)
        return [FileInfo(path=e.path, type=e.type, size=e.size) for e in entries]

    # --- operations -------------------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        return {
            "available": self.unavailable is None,
            "reason": self.unavailable,
            "runs": {"running": self.queue.running, "waiting": self.queue.waiting},
            "pool": self.pool.stats() if self.pool else {},
            "sandboxes": len(self.manager.sandboxes) if self.manager else 0,
            "memory": self.admission.stats(),
            "workspace_quota": "tmpfs"
            if self.engine is not None and self.engine.workspaces_in_ram
            else "polled",
            "checked_at": time.time(),
        }
