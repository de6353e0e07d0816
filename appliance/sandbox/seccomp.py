"""The seccomp filter of every sandbox: system calls that sandboxed code never needs are refused.

bwrap already gives the code its own namespaces, no capabilities and no_new_privs, so most of
what is denied here would fail anyway. The filter takes away the kernel surface that is left to
an unprivileged process, and that a kernel bug would be reached through: new user namespaces
(where the code would hold every capability again, over fresh mount, network and other
namespaces), the mount API, ptrace and reading other processes' memory, the keyring, BPF,
perf events, io_uring, userfaultfd, kexec and modules, and the rest listed in DENIED.

The program is classic BPF, generated here rather than through libseccomp: it is a short
deny-list whose every instruction a unit test can read and run (tests/unit/test_sandbox_seccomp.py
evaluates it with a small BPF interpreter), and the daemon gains no native dependency. It:

- checks the architecture first: x86_64 and aarch64 get their own syscall numbers; any other
  ABI a process might switch to (i386 through `int 0x80`, 32-bit ARM) kills the process;
- refuses x32 system calls on x86_64 (numbers with bit 30 set reach the same kernel functions
  under other numbers, so a filter of x86_64 numbers alone could be walked around);
- answers clone3 with ENOSYS: its flags sit in memory that seccomp cannot read, and on ENOSYS
  glibc, musl and the Go runtime fall back to clone, whose flags are a register and are checked;
- refuses clone and unshare with any namespace flag, personality changes other than the
  ordinary ones (ADDR_NO_RANDOMIZE would turn ASLR off), and every call in DENIED, with EPERM.

io_uring is refused as a whole: Node.js's libuv and other users fall back to their thread pools
when io_uring_setup fails, and submissions through a ring never pass this filter.
"""

from __future__ import annotations

import errno
import os
import platform
import struct
from dataclasses import dataclass

# --- classic BPF and seccomp constants -----------------------------------------------------

BPF_LD_W_ABS = 0x20
BPF_JEQ_K = 0x15
BPF_JGE_K = 0x35
BPF_JSET_K = 0x45
BPF_JA = 0x05
BPF_RET_K = 0x06

RET_KILL_PROCESS = 0x80000000
RET_ERRNO = 0x00050000
RET_ALLOW = 0x7FFF0000

OFF_NR = 0
OFF_ARCH = 4
OFF_ARG0_LOW = 16
"""struct seccomp_data: nr, arch, instruction_pointer, args[6]; both ABIs are little-endian, so
the low 32 bits of args[0] are at 16."""

AUDIT_ARCH_X86_64 = 0xC000003E
AUDIT_ARCH_AARCH64 = 0xC00000B7
X32_SYSCALL_BIT = 0x40000000

CLONE_NEWTIME = 0x00000080
CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
CLONE_NAMESPACES = (
    CLONE_NEWNS
    | CLONE_NEWCGROUP
    | CLONE_NEWUTS
    | CLONE_NEWIPC
    | CLONE_NEWUSER
    | CLONE_NEWPID
    | CLONE_NEWNET
)
"""Namespace flags of clone(); its low byte is the exit signal, so CLONE_NEWTIME (0x80) is not a
flag there (clone3 and unshare only)."""
UNSHARE_NAMESPACES = CLONE_NAMESPACES | CLONE_NEWTIME

PERSONALITIES_ALLOWED = (0x0, 0x0008, 0xFFFFFFFF)
"""personality(): PER_LINUX, PER_LINUX32 (what `linux32`/`setarch` asks for) and the query."""


@dataclass(frozen=True)
class Arch:
    name: str
    audit: int
    numbers: dict[str, int]
    """Every syscall the filter names, by name."""
    x32_bit: bool = False


DENIED = (
    # namespaces and the mount API (clone and unshare are checked by flag, clone3 is ENOSYS)
    "setns",
    "mount",
    "umount2",
    "pivot_root",
    "chroot",
    "move_mount",
    "open_tree",
    "open_tree_attr",
    "fsopen",
    "fsconfig",
    "fsmount",
    "fspick",
    "mount_setattr",
    # other processes
    "ptrace",
    "process_vm_readv",
    "process_vm_writev",
    "pidfd_getfd",
    # kernel facilities sandboxed code has no use for
    "keyctl",
    "add_key",
    "request_key",
    "bpf",
    "perf_event_open",
    "userfaultfd",
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
    "syslog",
    "open_by_handle_at",
    "name_to_handle_at",
    # the machine itself
    "kexec_load",
    "kexec_file_load",
    "init_module",
    "finit_module",
    "delete_module",
    "reboot",
    "swapon",
    "swapoff",
    "acct",
    "quotactl",
    "quotactl_fd",
)

_COMMON_NEW = {  # numbers from 424 on are the same on every architecture
    "pidfd_getfd": 438,
    "io_uring_setup": 425,
    "io_uring_enter": 426,
    "io_uring_register": 427,
    "open_tree": 428,
    "move_mount": 429,
    "fsopen": 430,
    "fsconfig": 431,
    "fsmount": 432,
    "fspick": 433,
    "clone3": 435,
    "mount_setattr": 442,
    "quotactl_fd": 443,
    "open_tree_attr": 467,
}

X86_64 = Arch(
    "x86_64",
    AUDIT_ARCH_X86_64,
    {
        **_COMMON_NEW,
        "clone": 56,
        "unshare": 272,
        "personality": 135,
        "setns": 308,
        "mount": 165,
        "umount2": 166,
        "pivot_root": 155,
        "chroot": 161,
        "ptrace": 101,
        "process_vm_readv": 310,
        "process_vm_writev": 311,
        "keyctl": 250,
        "add_key": 248,
        "request_key": 249,
        "bpf": 321,
        "perf_event_open": 298,
        "userfaultfd": 323,
        "syslog": 103,
        "open_by_handle_at": 304,
        "name_to_handle_at": 303,
        "kexec_load": 246,
        "kexec_file_load": 320,
        "init_module": 175,
        "finit_module": 313,
        "delete_module": 176,
        "reboot": 169,
        "swapon": 167,
        "swapoff": 168,
        "acct": 163,
        "quotactl": 179,
    },
    x32_bit=True,
)

AARCH64 = Arch(
    "aarch64",
    AUDIT_ARCH_AARCH64,
    {
        **_COMMON_NEW,
        "clone": 220,
        "unshare": 97,
        "personality": 92,
        "setns": 268,
        "mount": 40,
        "umount2": 39,
        "pivot_root": 41,
        "chroot": 51,
        "ptrace": 117,
        "process_vm_readv": 270,
        "process_vm_writev": 271,
        "keyctl": 219,
        "add_key": 217,
        "request_key": 218,
        "bpf": 280,
        "perf_event_open": 241,
        "userfaultfd": 282,
        "syslog": 116,
        "open_by_handle_at": 265,
        "name_to_handle_at": 264,
        "kexec_load": 104,
        "kexec_file_load": 294,
        "init_module": 105,
        "finit_module": 273,
        "delete_module": 106,
        "reboot": 142,
        "swapon": 224,
        "swapoff": 225,
        "acct": 89,
        "quotactl": 60,
    },
)

ARCHES = (X86_64, AARCH64)


# --- a tiny assembler with labels ---------------------------------------------------------


@dataclass(frozen=True)
class Insn:
    code: int
    k: int = 0
    jt: str | int = 0
    jf: str | int = 0
    """Jump targets: a label, or 0 for the next instruction."""


class _Program:
    def __init__(self) -> None:
        self.items: list[Insn | str] = []

    def label(self, name: str) -> None:
        self.items.append(name)

    def add(self, code: int, k: int = 0, jt: str | int = 0, jf: str | int = 0) -> None:
        self.items.append(Insn(code, k, jt, jf))

    def assemble(self) -> list[tuple[int, int, int, int]]:
        where: dict[str, int] = {}
        pc = 0
        for item in self.items:
            if isinstance(item, str):
                where[item] = pc
            else:
                pc += 1
        out: list[tuple[int, int, int, int]] = []
        for item in self.items:
            if isinstance(item, str):
                continue
            here = len(out)

            def offset(target: str | int, here: int = here) -> int:
                if isinstance(target, int):
                    return target
                off = where[target] - here - 1
                if not 0 <= off <= 255:
                    raise ValueError(f"jump to {target} out of range ({off})")
                return off

            k = item.k
            if item.code == BPF_JA and isinstance(item.jt, str):
                k, jt, jf = where[item.jt] - here - 1, 0, 0
            else:
                jt, jf = offset(item.jt), offset(item.jf)
            out.append((item.code, jt, jf, k))
        return out


def _arch_section(p: _Program, arch: Arch) -> None:
    n = arch.numbers
    a = arch.name
    p.label(a)
    p.add(BPF_LD_W_ABS, OFF_NR)
    if arch.x32_bit:
        p.add(BPF_JGE_K, X32_SYSCALL_BIT, jt="enosys")
    p.add(BPF_JEQ_K, n["clone3"], jt="enosys")
    p.add(BPF_JEQ_K, n["clone"], jt=f"{a}-clone")
    p.add(BPF_JEQ_K, n["unshare"], jt=f"{a}-unshare")
    p.add(BPF_JEQ_K, n["personality"], jt=f"{a}-personality")
    for name in DENIED:
        p.add(BPF_JEQ_K, n[name], jt="eperm")
    p.add(BPF_RET_K, RET_ALLOW)
    p.label(f"{a}-clone")
    p.add(BPF_LD_W_ABS, OFF_ARG0_LOW)
    p.add(BPF_JSET_K, CLONE_NAMESPACES, jt="eperm")
    p.add(BPF_RET_K, RET_ALLOW)
    p.label(f"{a}-unshare")
    p.add(BPF_LD_W_ABS, OFF_ARG0_LOW)
    p.add(BPF_JSET_K, UNSHARE_NAMESPACES, jt="eperm")
    p.add(BPF_RET_K, RET_ALLOW)
    p.label(f"{a}-personality")
    p.add(BPF_LD_W_ABS, OFF_ARG0_LOW)
    for allowed in PERSONALITIES_ALLOWED:
        p.add(BPF_JEQ_K, allowed, jt="allow")
    p.add(BPF_JA, jt="eperm")


def program(arches: tuple[Arch, ...] = ARCHES) -> list[tuple[int, int, int, int]]:
    """The filter as (code, jt, jf, k) instructions."""
    p = _Program()
    p.add(BPF_LD_W_ABS, OFF_ARCH)
    for arch in arches:
        p.add(BPF_JEQ_K, arch.audit, jt=arch.name)
    p.add(BPF_RET_K, RET_KILL_PROCESS)  # an ABI this filter does not know
    for arch in arches:
        _arch_section(p, arch)
    p.label("eperm")
    p.add(BPF_RET_K, RET_ERRNO | errno.EPERM)
    p.label("enosys")
    p.add(BPF_RET_K, RET_ERRNO | errno.ENOSYS)
    p.label("allow")
    p.add(BPF_RET_K, RET_ALLOW)
    return p.assemble()


def encode(insns: list[tuple[int, int, int, int]]) -> bytes:
    """struct sock_filter[] in the host's byte order, as bwrap's --seccomp reads it."""
    return b"".join(struct.pack("=HBBI", code, jt, jf, k) for code, jt, jf, k in insns)


FILTER = encode(program())


def host_supported(machine: str | None = None) -> bool:
    """Whether this filter knows the host's architecture (elsewhere sandboxes run without one)."""
    return (machine or platform.machine()) in {a.name for a in ARCHES} | {"arm64", "amd64"}


def filter_fd() -> int:
    """A pipe's read end with the whole filter in it, for bwrap's --seccomp (one per sandbox:
    bwrap reads it to the end)."""
    r, w = os.pipe()
    try:
        os.write(w, FILTER)  # about 1 KB: far below a pipe's buffer
    finally:
        os.close(w)
    return r
