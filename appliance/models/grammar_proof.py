"""The grammar prover: a child process that builds a request's grammar and proves llama.cpp parses it.

Started as `python -m appliance.models.grammar_proof` by appliance.models.grammars.GrammarProver,
one at a time, jailed like a model worker when the host allows. For each ProofRequest it checks
the client's schemas against the JSON Schema metaschema (jsonschema), converts the request's
schema to GBNF with the same converter the model worker used to run (llama-cpp-python's
`json_schema_to_gbnf`), bounds the grammar's size, and parses it with llama.cpp itself
(`llama_sampler_init_grammar` with no vocabulary; the grammars built from schemas name no tokens),
so a grammar that reaches a model worker is one llama.cpp has already accepted.

Everything here may fail on hostile input, so the process is bounded: its address space is capped
(RLIMIT_AS, set after the imports) and each proof gets a CPU budget (RLIMIT_CPU: SIGXCPU ends the
process); the daemon also kills it after a wall-clock timeout. A crash, kill or timeout fails that
one request with a 400 and the next proof starts a fresh process; no model worker ever sees it.

Frames on stdin/stdout are msgpack structs behind the same 4-byte length as the worker protocol.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import math
import os
import resource
import signal
import sys
import time
from typing import Any, BinaryIO

import msgspec

from appliance.models.schema_guard import join_param
from appliance.models.worker.protocol import HEADER

PROP_ORDER = ["tool_call", "name", "arguments", "response"]
"""Keys the grammar asks for first: a model should name a tool before its arguments."""


class ProofRequest(msgspec.Struct, tag="prove", kw_only=True):
    id: int
    checks: list[tuple[str, Any]] = []
    """(param, schema): client schemas to validate against the JSON Schema metaschema."""
    schema: Any = None
    """The schema to convert (the tool-call wrapper around tools, or a response_format schema)."""
    json_object: bool = False
    """Any JSON object (response_format json_object): llama-cpp-python's JSON grammar."""
    param: str = ""
    """What a conversion or parse failure is reported against."""
    max_grammar_bytes: int = 1 << 20


class ProofResult(msgspec.Struct, tag="proved", kw_only=True):
    id: int
    grammar: str | None = None
    """The proven GBNF; None when refused."""
    error: str | None = None
    param: str | None = None
    ms: float = 0.0


class Ready(msgspec.Struct, tag="ready", kw_only=True):
    pid: int
    import_ms: float


Message = ProofRequest | ProofResult | Ready
_enc = msgspec.msgpack.Encoder()
_dec = msgspec.msgpack.Decoder(Message)


def encode(msg: Message) -> bytes:
    body = _enc.encode(msg)
    return HEADER.pack(len(body)) + body


def decode(body: bytes) -> Message:
    return _dec.decode(body)


def read_frame(inp: BinaryIO) -> bytes | None:
    header = inp.read(HEADER.size)
    if len(header) < HEADER.size:
        return None
    (size,) = HEADER.unpack(header)
    body = inp.read(size)
    return body if len(body) == size else None


# --- inside the child ------------------------------------------------------------------------


class _Prover:
    def __init__(self, cpu_s: float) -> None:
        _t0 = time.perf_counter()
        import jsonschema
        import llama_cpp
        from llama_cpp.llama_grammar import JSON_GBNF, json_schema_to_gbnf

        self.llama = llama_cpp
        self.jsonschema = jsonschema
        self.json_gbnf = JSON_GBNF
        self.to_gbnf = json_schema_to_gbnf
        self.cpu_s = cpu_s
        self.prove(
            ProofRequest(id=0, checks=[("warm-up", {"type": "object"})], schema={"type": "string"})
        )
        self.import_ms = (time.perf_counter() - _t0) * 1000.0

    def prove(self, req: ProofRequest) -> ProofResult:
        t = time.perf_counter()
        used = resource.getrusage(resource.RUSAGE_SELF)
        _, hard = resource.getrlimit(resource.RLIMIT_CPU)
        soft = math.ceil(used.ru_utime + used.ru_stime + self.cpu_s)
        resource.setrlimit(
            resource.RLIMIT_CPU, (soft if hard == resource.RLIM_INFINITY else min(soft, hard), hard)
        )
        result = self._prove(req)
        result.ms = (time.perf_counter() - t) * 1000.0
        return result

    def _prove(self, req: ProofRequest) -> ProofResult:
        for param, schema in req.checks:
            error = self.metaschema_error(schema, param)
            if error is not None:
                return ProofResult(id=req.id, error=error[1], param=error[0])
        if req.json_object:
            gbnf = self.json_gbnf
        else:
            try:
                gbnf = self.to_gbnf(json.dumps(req.schema), prop_order=PROP_ORDER)
            except MemoryError:
                return self.refuse(
                    req,
                    "the grammar for this schema does not fit the memory allowed for grammars; "
                    "simplify the schema",
                )
            except RecursionError:
                return self.refuse(
                    req, "the schema nests too deeply to become a grammar; flatten it"
                )
            except Exception as exc:
                return self.refuse(
                    req,
                    f"the schema cannot become a grammar ({type(exc).__name__}: "
                    f"{str(exc)[:200]}); simplify it or remove unsupported keywords",
                )
        size = len(gbnf.encode("utf-8"))
        if size > req.max_grammar_bytes:
            return self.refuse(
                req,
                f"the grammar for this schema would be {size // 1024} KiB; the limit is "
                f"{req.max_grammar_bytes // 1024} KiB: lower length and count bounds, or use fewer "
                "alternatives",
            )
        why = self.parse(gbnf)
        if why is not None:
            return self.refuse(
                req,
                f"llama.cpp cannot use the grammar built from this schema ({why}); check for "
                "empty or contradictory parts, or simplify the schema",
            )
        return ProofResult(id=req.id, grammar=gbnf)

    @staticmethod
    def refuse(req: ProofRequest, message: str) -> ProofResult:
        return ProofResult(id=req.id, error=message, param=req.param)

    def metaschema_error(self, schema: Any, param: str) -> tuple[str, str] | None:
        js = self.jsonschema
        try:
            cls = js.validators.validator_for(schema, default=js.Draft202012Validator)
            cls.check_schema(schema)
        except js.SchemaError as exc:
            where = param
            for part in exc.absolute_path:
                where = join_param(where, part)
            return where, f"this is not valid JSON Schema: {exc.message[:200]}; fix the schema"
        except RecursionError:
            return param, "the schema nests too deeply; flatten it"
        return None

    def parse(self, gbnf: str) -> str | None:
        """None when llama.cpp parses `gbnf`, else the first line of what it printed."""
        capture = os.memfd_create("grammar-log")
        saved = os.dup(2)
        os.dup2(capture, 2)
        try:
            ptr = self.llama.llama_sampler_init_grammar(None, gbnf.encode("utf-8"), b"root")
            if ptr:
                self.llama.llama_sampler_free(ptr)
                return None
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        os.lseek(capture, 0, os.SEEK_SET)
        printed = os.read(capture, 4096).decode("utf-8", "replace")
        os.close(capture)
        for line in printed.splitlines():
            if "error" in line or "failed" in line or "unsupported" in line:
                return line.strip()[:200]
        return "it refused to parse it"


def _die_with_parent() -> None:
    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _vm_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m appliance.models.grammar_proof")
    ap.add_argument("--memory-mb", type=int, default=512)
    ap.add_argument("--cpu-s", type=float, default=10.0)
    args = ap.parse_args(argv)
    _die_with_parent()
    out = os.fdopen(os.dup(1), "wb", buffering=0)
    os.dup2(2, 1)  # anything llama.cpp prints goes to stderr, never into the frames
    sys.stdout = sys.stderr
    prover = _Prover(args.cpu_s)
    # after the imports: the cap is headroom above what the libraries map, not a guess at their size
    limit = _vm_bytes() + args.memory_mb * 2**20
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    out.write(encode(Ready(pid=os.getpid(), import_ms=prover.import_ms)))
    while True:
        body = read_frame(sys.stdin.buffer)
        if body is None:
            break
        req = decode(body)
        if isinstance(req, ProofRequest):
            out.write(encode(prover.prove(req)))
    os._exit(0)


if __name__ == "__main__":
    raise SystemExit(main())
