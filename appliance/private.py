"""Files only the daemon's user may read: the state directory is 0700, the files in it 0600.

The state holds every transcript, parked KV cache and workspace, and another local user must not
be able to read them with `sqlite3` while the API tells them 401. `appliance serve` sets umask
0o077 at start, so everything the daemon and its children create is private; the helpers here
set the modes explicitly where the appliance creates its own files, so the same holds when it is
used as a library under any umask, and they tighten what an older version left readable.
"""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path

DIR_MODE = 0o700
FILE_MODE = 0o600
DAEMON_UMASK = 0o077


def private_dir(path: Path) -> Path:
    """Create `path` (and its missing parents) and make `path` itself 0700.

    A directory this user does not own keeps its mode (`appliance doctor` reports it)."""
    path.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
    if stat.S_IMODE(path.stat().st_mode) != DIR_MODE:
        with contextlib.suppress(PermissionError):
            os.chmod(path, DIR_MODE)
    return path


def make_private(path: Path) -> None:
    """Make an existing file 0600; a missing one, or one this user does not own, is left alone."""
    with contextlib.suppress(FileNotFoundError, PermissionError):
        if stat.S_IMODE(path.stat().st_mode) & 0o077:
            os.chmod(path, FILE_MODE)


def create_private(path: Path) -> None:
    """Create `path` empty and 0600 if it does not exist yet, else `make_private` it."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
    except FileExistsError:
        make_private(path)
        return
    try:
        os.fchmod(fd, FILE_MODE)
    finally:
        os.close(fd)


def open_private(path: Path, flags: int = os.O_WRONLY | os.O_CREAT | os.O_TRUNC) -> int:
    """`os.open` for writing a file that is 0600 whatever the umask (also when it existed)."""
    fd = os.open(path, flags | os.O_CLOEXEC, FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)
    except BaseException:
        os.close(fd)
        raise
    return fd


def write_private(path: Path, data: bytes) -> None:
    """Write `data` to `path`, 0600."""
    with os.fdopen(open_private(path), "wb") as f:
        f.write(data)


def readable_by_others(path: Path) -> bool:
    """Whether the group or other users may read, write or enter `path`."""
    return bool(stat.S_IMODE(path.stat().st_mode) & 0o077)
