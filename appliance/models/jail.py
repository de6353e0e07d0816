"""What the model runtime asks of a jail: a command line that runs a child with less.

Model workers parse untrusted GGUF files and the grammar prover parses client schemas, both in
llama.cpp's C++; a bug there must not reach the network, the daemon's files or other processes.
The runtime does not build jails itself (the bwrap policy lives with the parts that know the
model directories and the KV directory: appliance.host.worker_jail); it is handed a `Jail`
and asks it to wrap each command. A `JailedCommand` says what to run, which file descriptors to
pass, where the jailer reports the child's host pid, and what the child can read, so the
scheduler can tell whether a pre-warmed spare can see the model it is about to load.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import psutil


def _under(path: str, roots: Sequence[str]) -> bool:
    return any(path == r or path.startswith(r.rstrip("/") + "/") for r in roots)


@dataclass(frozen=True)
class JailedCommand:
    argv: list[str]
    pass_fds: tuple[int, ...] = ()
    """Descriptors the child inherits (the jailer's info pipe); the parent closes them after the spawn."""
    info_fd: int | None = None
    """Read end of the jailer's report (bwrap --info-fd: {"child-pid": N}); None when unjailed."""
    readable: tuple[str, ...] | None = None
    """Paths (files or trees) the child can read; None: everything the daemon can."""

    def sees(self, path: str) -> bool:
        """Whether the child can open `path` (also where a symlink in it leads)."""
        if self.readable is None:
            return True
        return _under(os.path.abspath(path), self.readable) and _under(
            os.path.realpath(path), self.readable
        )

    def child_pid(self) -> int | None:
        """The host pid of the jailed program, once it runs: the child of the pid namespace's
        reaper, whose host pid bwrap reports (the daemon's own child is bwrap's monitor)."""
        if self.info_fd is None:
            return None
        try:
            os.set_blocking(self.info_fd, False)
            data = os.read(self.info_fd, 65536)
        except OSError:
            return None
        finally:
            os.close(self.info_fd)
        try:
            reaper = json.loads(data.decode()).get("child-pid")
        except (ValueError, AttributeError):
            return None
        if not isinstance(reaper, int):
            return None
        try:
            children = psutil.Process(reaper).children()
        except psutil.Error:
            return None
        return children[0].pid if len(children) == 1 else None

    def discard(self) -> None:
        """The child never ran (or its start failed): close the report pipe unread. Call this or
        child_pid, once."""
        if self.info_fd is not None:
            with contextlib.suppress(OSError):
                os.close(self.info_fd)

    def close_child_fds(self) -> None:
        for fd in self.pass_fds:
            os.close(fd)


class Jail(Protocol):
    async def unusable(self) -> str | None:
        """None when jailed commands run on this host, else why not (checked once)."""
        ...

    def command(self, argv: Sequence[str], *, models: bool) -> JailedCommand:
        """`argv` wrapped to run jailed. `models`: the child loads models (model directories
        read-only, the KV directory writable, GPU devices); without it only the Python
        environment is visible (the grammar prover)."""
        ...
