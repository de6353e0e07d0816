"""Find the processes a daemon (or a sandbox engine) left behind, independently of the code under test.

A process counts as one of a state directory's when it is still alive (same pid, same start time)
and either was seen as a descendant of the daemon while it ran (`DescendantWatch`), or names the
state directory in its command line or environment (bwrap's arguments bind the workspace by its
host path; model workers carry the state directory in their environment).
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Iterable
from pathlib import Path

Proc = tuple[int, int]
"""(pid, start time in clock ticks): a pid alone may be reused."""


def start_ticks(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def alive(proc: Proc) -> bool:
    """Whether the process still runs (a zombie has ended: it only waits to be reaped)."""
    pid, ticks = proc
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X") and start_ticks(pid) == ticks


def describe(pid: int) -> str:
    try:
        cmd = (
            Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        )
        ppid = next(
            line.split()[1]
            for line in Path(f"/proc/{pid}/status").read_text().splitlines()
            if line.startswith("PPid:")
        )
    except (OSError, StopIteration):
        return f"{pid} (gone)"
    return f"{pid} (ppid {ppid}): {cmd[:300]}"


def naming(marker: str) -> set[Proc]:
    """Live processes whose command line or environment mentions `marker`."""
    needle = marker.encode()
    found: set[Proc] = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        pid = int(entry)
        for part in ("cmdline", "environ"):
            try:
                if needle in Path(f"/proc/{pid}/{part}").read_bytes():
                    ticks = start_ticks(pid)
                    if ticks is not None and alive((pid, ticks)):
                        found.add((pid, ticks))
                    break
            except OSError:
                continue
    return found


def descendants(pid: int) -> set[Proc]:
    """Every process below `pid` right now (through pid namespaces: /proc shows them all)."""
    out: set[Proc] = set()
    todo = [pid]
    while todo:
        parent = todo.pop()
        try:
            tasks = os.listdir(f"/proc/{parent}/task")
        except OSError:
            continue
        for tid in tasks:
            try:
                children = Path(f"/proc/{parent}/task/{tid}/children").read_text().split()
            except OSError:
                continue
            for child in map(int, children):
                ticks = start_ticks(child)
                if ticks is not None and (child, ticks) not in out:
                    out.add((child, ticks))
                    todo.append(child)
    return out


class DescendantWatch:
    """Records every descendant of a process, sampled every few ms until it is stopped."""

    def __init__(self, pid: int, interval: float = 0.005) -> None:
        self.pid = pid
        self.interval = interval
        self.seen: set[Proc] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="descendant-watch", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.seen |= descendants(self.pid)
            self._stop.wait(self.interval)

    def stop(self) -> set[Proc]:
        self.seen |= descendants(self.pid)
        self._stop.set()
        self._thread.join(5)
        return self.seen


def survivors(markers: Iterable[str], known: Iterable[Proc] = (), wait_s: float = 5.0) -> list[str]:
    """What is still alive after `wait_s` (polling; empty as soon as nothing is left)."""
    known = set(known)
    markers = list(markers)
    deadline = time.monotonic() + wait_s
    while True:
        left = {p for p in known if alive(p)}
        for marker in markers:
            left |= naming(marker)
        if not left or time.monotonic() > deadline:
            return [describe(pid) for pid, _ in sorted(left)]
        time.sleep(0.1)


def kill_all(procs: Iterable[Proc]) -> None:
    """Clean up after a failing test, so one failure does not leak into the next test."""
    for proc in procs:
        if alive(proc):
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc[0], 9)


def workspaces(state_dir: Path) -> list[str]:
    """Workspaces left in the state directory's sandboxes/ (its .etc files are not one)."""
    root = state_dir / "sandboxes"
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if not p.name.startswith("."))
