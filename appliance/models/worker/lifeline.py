"""The worker's tie to the daemon: the kernel kills it when the daemon dies, however it dies."""

from __future__ import annotations

import ctypes
import signal


def die_with_parent() -> None:
    """Ask for SIGKILL when the parent exits (PR_SET_PDEATHSIG); a no-op where libc lacks prctl."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass
