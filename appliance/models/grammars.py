"""Grammars for constrained replies, built and proven in the daemon before a request takes a lease.

A chat request with tools, or with `response_format` json_schema/json_object, is answered under a
GBNF grammar. `GrammarCompiler.for_chat` decides which grammar a request needs (the same rules
the worker used to apply: the tool-call wrapper when tools are offered, else the response
format), checks every client schema against the limits of appliance.models.schema_guard (cheap,
on the event loop), and has the grammar prover (a bounded child process,
appliance.models.grammar_proof) validate the schemas against the JSON Schema metaschema, convert
them and parse the result with llama.cpp. The model worker receives proven GBNF text only, so a
schema llama.cpp cannot handle fails its own request with a 400 and never a worker.

Verdicts, refusals included, are cached in an LRU bounded in entries and in bytes, keyed by the
canonical JSON of what decides the grammar; a repeated schema costs one hash. Concurrent requests
with the same cold schema share one proof.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from appliance.config import ModelsConfig
from appliance.errors import InvalidRequest, ModelUnavailable
from appliance.models import chat_format as cf
from appliance.models.grammar_proof import ProofRequest, ProofResult, Ready, decode, encode
from appliance.models.jail import Jail
from appliance.models.schema_guard import SchemaLimits, check_schema
from appliance.models.worker.protocol import HEADER

log = logging.getLogger("appliance.grammars")

MiB = 2**20


@dataclass(frozen=True)
class GrammarSettings:
    timeout_s: float = 10.0
    """Wall-clock time one proof may take before the prover is killed and the request refused."""
    memory_mb: int = 512
    """Address space the prover may add to what its libraries map (RLIMIT_AS)."""
    cache_entries: int = 256
    """Verdicts kept (proven grammars and refusals), least recently used out first."""
    cache_bytes: int = 32 * MiB
    """Grammar text kept in the cache, at most."""
    max_grammar_bytes: int = 1 * MiB
    """Largest GBNF a schema may become (a model worker parses it once per distinct grammar)."""
    limits: SchemaLimits = field(default_factory=SchemaLimits)

    @classmethod
    def from_config(cls, config: ModelsConfig) -> GrammarSettings:
        return cls(
            timeout_s=config.grammar_timeout_s,
            memory_mb=config.grammar_memory_mb,
            cache_entries=config.grammar_cache_size,
        )


class BoundedCache:
    """An LRU of str -> value with a bound on entries and on the summed `cost` of the values."""

    def __init__(self, entries: int, budget: int) -> None:
        self.entries = entries
        self.budget = budget
        self.cost = 0
        self._items: collections.OrderedDict[str, tuple[Any, int]] = collections.OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: str) -> Any:
        hit = self._items.get(key)
        if hit is None:
            return None
        self._items.move_to_end(key)
        return hit[0]

    def put(self, key: str, value: Any, cost: int) -> None:
        if key in self._items:
            self.cost -= self._items.pop(key)[1]
        if cost > self.budget:
            return
        self._items[key] = (value, cost)
        self.cost += cost
        while len(self._items) > self.entries or self.cost > self.budget:
            _, (_, dropped) = self._items.popitem(last=False)
            self.cost -= dropped


@dataclass(frozen=True)
class _Verdict:
    grammar: str | None
    error: InvalidRequest | None


def _refusal(message: str, param: str | None) -> InvalidRequest:
    return InvalidRequest(message, param=param, code="invalid_json_schema")


class GrammarProver:
    """The daemon's side of the grammar prover: one child, one proof at a time, restarted after
    a crash, a timeout or `recycle_after` proofs (its allocator never gives everything back)."""

    def __init__(
        self,
        settings: GrammarSettings | None = None,
        *,
        jail: Jail | None = None,
        env: dict[str, str] | None = None,
        python: str | None = None,
        start_timeout_s: float = 60.0,
        recycle_after: int = 1000,
    ) -> None:
        self.settings = settings or GrammarSettings()
        self.jail = jail
        self.env = env or {}
        """Added to the child's environment (the daemon marks its children with its state dir)."""
        self.python = python or sys.executable
        self.start_timeout_s = start_timeout_s
        self.recycle_after = recycle_after
        self.proc: asyncio.subprocess.Process | None = None
        self.pid: int | None = None
        self.proofs = 0
        self.restarts = 0
        self._lock = asyncio.Lock()
        self._ids = 0

    async def _start(self) -> asyncio.subprocess.Process:
        s = self.settings
        argv = [
            self.python,
            "-m",
            "appliance.models.grammar_proof",
            "--memory-mb",
            str(s.memory_mb),
            "--cpu-s",
            str(max(1.0, s.timeout_s)),
        ]
        jailed = None
        if self.jail is not None and await self.jail.unusable() is None:
            jailed = self.jail.command(argv, models=False)
        env = {
            k: v for k, v in os.environ.items() if not k.startswith("APPLIANCE_TOKEN")
        } | self.env
        env.update(CUDA_VISIBLE_DEVICES="", GGML_NO_BACKTRACE="1")  # parsing needs no GPU
        try:
            proc = await asyncio.create_subprocess_exec(
                *(jailed.argv if jailed else argv),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.DEVNULL,
                env=env,
                pass_fds=jailed.pass_fds if jailed else (),
                start_new_session=True,
            )
        finally:
            if jailed is not None:
                jailed.close_child_fds()
        try:
            ready = await asyncio.wait_for(self._read(proc), self.start_timeout_s)
        except (TimeoutError, asyncio.IncompleteReadError) as exc:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            if jailed is not None:
                jailed.discard()
            await proc.wait()
            raise ModelUnavailable(
                "the grammar checker did not start, so this request's schema cannot be "
                "checked; retry, and see `appliance doctor` if it persists"
            ) from exc
        if not isinstance(ready, Ready):
            proc.kill()
            if jailed is not None:
                jailed.discard()
            raise ModelUnavailable("the grammar checker spoke out of turn; retry")
        self.pid = (jailed.child_pid() if jailed else None) or ready.pid
        self.proofs = 0
        return proc

    @staticmethod
    async def _read(proc: asyncio.subprocess.Process) -> Any:
        assert proc.stdout is not None
        header = await proc.stdout.readexactly(HEADER.size)
        (size,) = HEADER.unpack(header)
        return decode(await proc.stdout.readexactly(size))

    async def prove(self, req: ProofRequest) -> ProofResult:
        """The proof of `req`; InvalidRequest when the prover crashed or ran out of time on it."""
        async with self._lock:
            if (
                self.proc is None
                or self.proc.returncode is not None
                or self.proofs >= self.recycle_after
            ):
                await self._stop()
                self.proc = await self._start()
            proc = self.proc
            assert proc.stdin is not None
            self._ids += 1
            req.id = self._ids
            self.proofs += 1
            try:
                proc.stdin.write(encode(req))
                await proc.stdin.drain()
                result = await asyncio.wait_for(self._read(proc), self.settings.timeout_s)
            except TimeoutError:
                await self._stop()
                raise _refusal(
                    f"checking the grammar for this schema took longer than {self.settings.timeout_s:g} s; "
                    "simplify the schema (fewer alternatives, smaller bounds, shorter patterns)",
                    req.param,
                ) from None
            except (asyncio.IncompleteReadError, ConnectionError):
                rc = await proc.wait()
                self.proc = None
                self.restarts += 1
                how = _signal_name(rc)
                raise _refusal(
                    f"llama.cpp could not build a grammar from this schema (the grammar checker {how}); "
                    "simplify the schema",
                    req.param,
                ) from None
            if not isinstance(result, ProofResult) or result.id != req.id:
                await self._stop()
                raise _refusal("the grammar checker answered out of turn; retry", req.param)
            return result

    async def _stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.returncode is None:
            self.restarts += 1
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            if self.pid is not None and self.pid != proc.pid:  # jailed: the prover, not only bwrap
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.pid, signal.SIGKILL)
            await proc.wait()

    async def close(self) -> None:
        async with self._lock:
            await self._stop()


def _signal_name(rc: int) -> str:
    sig = -rc if rc < 0 else rc - 128 if rc > 128 else 0
    if sig:
        with contextlib.suppress(ValueError):
            name = signal.Signals(sig).name
            return {"SIGXCPU": "ran out of CPU time", "SIGKILL": "was killed (out of memory?)"}.get(
                name, f"was killed by {name}"
            )
    return f"exited with status {rc}"


@dataclass
class _Plan:
    """What decides a request's grammar, and the client schemas it came from."""

    key: str
    request: ProofRequest
    checks: list[tuple[str, dict[str, Any]]]


class GrammarCompiler:
    """Chat params -> the proven GBNF text their reply must follow, or None (no constraint)."""

    def __init__(self, prover: GrammarProver, settings: GrammarSettings | None = None) -> None:
        self.prover = prover
        self.settings = settings or prover.settings
        self.cache = BoundedCache(self.settings.cache_entries, self.settings.cache_bytes)
        self._inflight: dict[str, asyncio.Future[_Verdict]] = {}
        self.stats = {"hits": 0, "proofs": 0, "refused": 0}

    def plan(
        self,
        params: Mapping[str, Any],
        *,
        tool_param: str = "tools[{i}].function.parameters",
        format_param: str = "response_format.json_schema.schema",
    ) -> _Plan | None:
        """Which grammar `params` needs (InvalidRequest for malformed tools or response_format)."""
        tools, required = cf.select_tools(params.get("tools"), params.get("tool_choice"))
        checks: list[tuple[str, dict[str, Any]]] = []
        if tools:
            if len(tools) > self.settings.limits.max_alternatives:
                raise _refusal(
                    f"{len(tools)} tools are offered; at most {self.settings.limits.max_alternatives} "
                    "can constrain one reply",
                    "tools",
                )
            index = {id(t): i for i, t in enumerate(params.get("tools") or [])}
            for t in tools:
                schema = t["function"].get("parameters")
                if schema is not None:
                    checks.append((tool_param.format(i=index.get(id(t), 0)), schema))
            req = ProofRequest(id=0, schema=cf.tool_call_schema(tools, required), param="tools")
        else:
            schema = cf.response_format_schema(params.get("response_format"))
            if schema is None:
                return None
            if schema == {"type": "object"}:
                req = ProofRequest(id=0, json_object=True, param="response_format")
            else:
                checks.append((format_param, schema))
                req = ProofRequest(id=0, schema=schema, param=format_param)
        req.checks = list(checks)
        req.max_grammar_bytes = self.settings.max_grammar_bytes
        try:
            canon = json.dumps(
                [req.schema, req.json_object, checks], sort_keys=True, separators=(",", ":")
            )
        except (TypeError, ValueError, RecursionError):
            raise _refusal("the schema is not plain JSON", req.param) from None
        return _Plan(hashlib.sha256(canon.encode()).hexdigest(), req, checks)

    async def for_chat(
        self,
        params: Mapping[str, Any],
        *,
        tool_param: str = "tools[{i}].function.parameters",
        format_param: str = "response_format.json_schema.schema",
    ) -> str | None:
        """The proven grammar of a chat request, or None; InvalidRequest (400) when refused.

        `tool_param` and `format_param` name the client's fields in errors (the Responses API
        spells them `tools[i].parameters` and `text.format.schema`)."""
        plan = self.plan(params, tool_param=tool_param, format_param=format_param)
        if plan is None:
            return None
        verdict: _Verdict | None = self.cache.get(plan.key)
        if verdict is not None:
            self.stats["hits"] += 1
        else:
            pending = self._inflight.get(plan.key)
            if pending is None:
                pending = asyncio.ensure_future(self._decide(plan))
                self._inflight[plan.key] = pending
                pending.add_done_callback(lambda _f: self._inflight.pop(plan.key, None))
            verdict = await asyncio.shield(pending)
        if verdict.error is not None:
            raise verdict.error
        return verdict.grammar

    async def _decide(self, plan: _Plan) -> _Verdict:
        verdict = await self._verdict(plan)
        if verdict.error is not None:
            self.stats["refused"] += 1
        self.cache.put(plan.key, verdict, len(verdict.grammar or "") + 256)
        return verdict

    async def _verdict(self, plan: _Plan) -> _Verdict:
        limits = self.settings.limits
        nodes = size = 0
        try:
            for param, schema in plan.checks:
                stats = check_schema(schema, param, limits)
                nodes, size = nodes + stats.nodes, size + stats.bytes
            where = plan.request.param
            if size > limits.max_bytes:
                raise _refusal(
                    f"the request's schemas are {size // 1024} KiB together; at most "
                    f"{limits.max_bytes // 1024} KiB are accepted",
                    where,
                )
            if nodes > limits.max_nodes:
                raise _refusal(
                    f"the request's schemas have {nodes} subschemas together; at most "
                    f"{limits.max_nodes} are accepted",
                    where,
                )
        except InvalidRequest as exc:
            return _Verdict(None, exc)
        t = time.perf_counter()
        try:  # a ModelUnavailable (no prover) is not this schema's verdict: raised, never cached
            result = await self.prover.prove(plan.request)
        except InvalidRequest as exc:
            return _Verdict(None, exc)
        self.stats["proofs"] += 1
        log.debug(
            "grammar proof: %.1f ms (in the prover %.1f ms)",
            (time.perf_counter() - t) * 1000,
            result.ms,
        )
        if result.grammar is None:
            return _Verdict(None, _refusal(result.error or "the schema was refused", result.param))
        return _Verdict(result.grammar, None)

    async def close(self) -> None:
        await self.prover.close()
