"""The sandbox's seccomp filter, run instruction by instruction in a small classic-BPF interpreter.

The integration side (the kernel really refusing these calls inside a sandbox) is in
tests/integration/test_sandbox_escape.py.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import struct

import pytest

from appliance.sandbox import seccomp
from appliance.sandbox.seccomp import (
    AARCH64,
    CLONE_NEWNET,
    CLONE_NEWNS,
    CLONE_NEWTIME,
    CLONE_NEWUSER,
    DENIED,
    RET_ALLOW,
    RET_ERRNO,
    RET_KILL_PROCESS,
    X86_64,
    Arch,
)

EPERM = RET_ERRNO | errno.EPERM
ENOSYS = RET_ERRNO | errno.ENOSYS
THREAD_FLAGS = 0x3D0F00  # what glibc's pthread_create passes to clone: VM, FS, FILES, SIGHAND...
FORK_FLAGS = 0x01200011  # fork() through clone: CHILD_SETTID | CHILD_CLEARTID | SIGCHLD


def run_filter(data: bytes, insns: list[tuple[int, int, int, int]] | None = None) -> int:
    """Evaluate a classic BPF program over `data` (a struct seccomp_data) like the kernel does."""
    insns = seccomp.program() if insns is None else insns
    acc, pc = 0, 0
    while True:
        code, jt, jf, k = insns[pc]
        if code == seccomp.BPF_LD_W_ABS:
            (acc,) = struct.unpack_from("<I", data, k)
            pc += 1
        elif code == seccomp.BPF_RET_K:
            return k
        elif code == seccomp.BPF_JA:
            pc += 1 + k
        elif code in (seccomp.BPF_JEQ_K, seccomp.BPF_JGE_K, seccomp.BPF_JSET_K):
            taken = {
                seccomp.BPF_JEQ_K: acc == k,
                seccomp.BPF_JGE_K: acc >= k,
                seccomp.BPF_JSET_K: bool(acc & k),
            }[code]
            pc += 1 + (jt if taken else jf)
        else:
            raise AssertionError(f"unexpected opcode {code:#x}")


def data(arch: Arch | int, nr: int | str, arg0: int = 0) -> bytes:
    audit = arch if isinstance(arch, int) else arch.audit
    number = arch.numbers[nr] if isinstance(nr, str) and isinstance(arch, Arch) else nr
    assert isinstance(number, int)
    return struct.pack("<iIQ6Q", number, audit, 0, arg0 & (2**64 - 1), 0, 0, 0, 0, 0)


@pytest.mark.parametrize("arch", [X86_64, AARCH64], ids=lambda a: a.name)
def test_ordinary_calls_pass_and_denied_ones_get_eperm(arch: Arch) -> None:
    for nr in (0, 1, 3, 59, 60, 63, 200, 231, 434, 436, 439):  # read, write, close, exec, exit...
        if nr in arch.numbers.values():
            continue
        assert run_filter(data(arch, nr)) == RET_ALLOW, nr
    for name in DENIED:
        assert run_filter(data(arch, name)) == EPERM, name


@pytest.mark.parametrize("arch", [X86_64, AARCH64], ids=lambda a: a.name)
def test_namespaces_are_refused_by_flag(arch: Arch) -> None:
    assert run_filter(data(arch, "clone3")) == ENOSYS  # so libc falls back to clone
    assert run_filter(data(arch, "clone", THREAD_FLAGS)) == RET_ALLOW
    assert run_filter(data(arch, "clone", FORK_FLAGS)) == RET_ALLOW
    for flag in (CLONE_NEWUSER, CLONE_NEWNS, CLONE_NEWNET, CLONE_NEWUSER | FORK_FLAGS):
        assert run_filter(data(arch, "clone", flag)) == EPERM, hex(flag)
    # clone's low byte is the exit signal: 0x80 there is a signal number, not CLONE_NEWTIME
    assert run_filter(data(arch, "clone", 0x80 | 0x11)) == RET_ALLOW
    assert run_filter(data(arch, "unshare", CLONE_NEWTIME)) == EPERM
    assert run_filter(data(arch, "unshare", CLONE_NEWUSER)) == EPERM
    assert run_filter(data(arch, "unshare", 0x400)) == RET_ALLOW  # CLONE_FILES: no namespace
    # high bits of the 64-bit argument do not hide a flag in the low word
    assert run_filter(data(arch, "unshare", (1 << 40) | CLONE_NEWUSER)) == EPERM


@pytest.mark.parametrize("arch", [X86_64, AARCH64], ids=lambda a: a.name)
def test_personality_may_not_turn_off_aslr(arch: Arch) -> None:
    assert run_filter(data(arch, "personality", 0xFFFFFFFF)) == RET_ALLOW  # the query
    assert run_filter(data(arch, "personality", 0)) == RET_ALLOW
    assert run_filter(data(arch, "personality", 0x0008)) == RET_ALLOW  # PER_LINUX32
    assert run_filter(data(arch, "personality", 0x0040000)) == EPERM  # ADDR_NO_RANDOMIZE


def test_x32_and_foreign_abis_cannot_walk_around_the_filter() -> None:
    ptrace_x32 = 0x40000000 | 521  # x32's own ptrace number
    assert run_filter(data(X86_64, ptrace_x32)) == ENOSYS
    assert run_filter(data(X86_64, 0x40000000 | X86_64.numbers["mount"])) == ENOSYS
    assert run_filter(data(0x40000003, 26)) == RET_KILL_PROCESS  # i386 ptrace via int 0x80
    assert run_filter(data(0x40000028, 26)) == RET_KILL_PROCESS  # 32-bit ARM


def test_the_encoding_is_what_bwrap_reads() -> None:
    insns = seccomp.program()
    assert len(seccomp.FILTER) == 8 * len(insns) < 4096  # BPF_MAXINSNS is 4096
    assert struct.unpack("=HBBI", seccomp.FILTER[:8]) == insns[0]
    assert run_filter(data(X86_64, "bpf"), insns) == EPERM


LIBSECCOMP = ctypes.util.find_library("seccomp")


@pytest.mark.skipif(LIBSECCOMP is None, reason="libseccomp is not installed to compare against")
@pytest.mark.parametrize("arch", [X86_64, AARCH64], ids=lambda a: a.name)
def test_syscall_numbers_match_libseccomp(arch: Arch) -> None:
    lib = ctypes.CDLL(LIBSECCOMP)
    resolve = lib.seccomp_syscall_resolve_name_arch
    resolve.argtypes, resolve.restype = [ctypes.c_uint32, ctypes.c_char_p], ctypes.c_int
    for name, nr in arch.numbers.items():
        known = resolve(arch.audit, name.encode())
        if known < 0:  # newer than this libseccomp (open_tree_attr arrived in Linux 6.15)
            continue
        assert known == nr, (arch.name, name)
