"""Batches of test cases: one program, compiled once, run against many inputs.

Evaluation and RL workloads check each model-written program against a list of cases. Sending
each case as its own `POST /api/run` would compile a C or Rust program once per case; a batch
compiles it once, in a sandbox of its own, then runs every case in a fresh sandbox (its own
workspace, pid namespace and limits: no case sees another's files or processes), as many at once
as the sandbox queue allows. The compiled workspace is copied into each case's workspace, since a
case may write next to the binary.

A case passes when it ran to exit status 0 and, if it names `expected_stdout`, its output matches
under the case's comparison: exact, whitespace-insensitive (the same words), or numeric (the same
words, numbers equal within `tolerance`, relative or absolute).
"""

from __future__ import annotations

import math
import os
import stat
from dataclasses import dataclass
from typing import Literal

import msgspec

from appliance.sandbox.workspace import Workspace

Compare = Literal["exact", "whitespace", "numeric"]

MAX_ARTIFACT_FILES = 256
"""Files of a compiled workspace carried into each case (more is a compile that went astray)."""


class BatchCase(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    stdin: str | None = None
    args: list[str] = msgspec.field(default_factory=list)
    files: dict[str, str] = msgspec.field(default_factory=dict)
    """Files for this case only: relative path -> base64 content."""
    timeout_s: float | None = None
    expected_stdout: str | None = None
    compare: Compare = "exact"
    tolerance: float = 1e-6
    """For `numeric`: how far two numbers may be apart, relatively or absolutely."""


class BatchRequest(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    language: str
    code: str
    files: dict[str, str] = msgspec.field(default_factory=dict)
    """Files every case sees (the program's data): relative path -> base64 content."""
    cases: list[BatchCase]
    compile_timeout_s: float | None = None
    memory_mb: int | None = None
    stop_on_failure: bool = False
    """Cancel the cases not yet started once one has failed (for a pass/fail verdict only)."""


class CaseResult(msgspec.Struct, kw_only=True):
    index: int
    status: Literal["ok", "error", "timeout", "oom", "killed", "skipped"]
    exit_code: int | None
    stdout: str
    stderr: str
    stdout_truncated: bool
    stderr_truncated: bool
    duration_ms: float
    cpu_ms: float
    peak_memory_mb: float
    reason: str | None = None
    passed: bool | None = None
    """Whether the case passed (exit status 0 and, when expected_stdout was given, a match);
    None for a case that was skipped."""


class CompileResult(msgspec.Struct, kw_only=True):
    status: Literal["ok", "error", "timeout", "oom", "killed"]
    stdout: str
    stderr: str
    duration_ms: float
    reason: str | None = None


class BatchResult(msgspec.Struct, kw_only=True):
    language: str
    compile: CompileResult | None
    """The compile step of a compiled language (None for interpreted ones)."""
    cases: list[CaseResult]
    passed: int
    failed: int
    duration_ms: float


def output_matches(actual: str, expected: str, compare: Compare, tolerance: float) -> bool:
    if compare == "exact":
        return actual == expected
    got, want = actual.split(), expected.split()
    if compare == "whitespace" or len(got) != len(want):
        return got == want
    for a, b in zip(got, want, strict=True):
        if a == b:
            continue
        try:
            x, y = float(a), float(b)
        except ValueError:
            return False
        if not math.isclose(x, y, rel_tol=tolerance, abs_tol=tolerance):
            return False
    return True


@dataclass(frozen=True)
class Artifact:
    path: str
    data: bytes
    executable: bool


def snapshot(workspace: Workspace, max_bytes: int) -> list[Artifact]:
    """The regular files of a compiled workspace, to be written into each case's workspace."""
    out: list[Artifact] = []
    total = 0
    for entry in workspace.list_files():
        if entry.type != "file":
            continue
        fd = workspace.open_regular(entry.path)
        with open(fd, "rb", closefd=True) as f:
            mode = stat.S_IMODE(os.fstat(f.fileno()).st_mode)
            data = f.read(max_bytes - total + 1)
        total += len(data)
        if total > max_bytes or len(out) >= MAX_ARTIFACT_FILES:
            raise ArtifactTooLarge(
                f"the compiled program's workspace holds more than {max_bytes // 2**20} MB or "
                f"{MAX_ARTIFACT_FILES} files; a batch carries it into every case, so keep it small"
            )
        out.append(Artifact(entry.path, data, bool(mode & 0o111)))
    return out


def restore(workspace: Workspace, artifacts: list[Artifact]) -> None:
    for a in artifacts:
        workspace.write_file(a.path, a.data, executable=a.executable)


class ArtifactTooLarge(Exception):
    """Raised by `snapshot`; the service turns it into the batch's compile error."""
