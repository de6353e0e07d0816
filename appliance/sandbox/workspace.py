"""A sandbox's workspace: a host directory under `<state_dir>/sandboxes/`, seen as /workspace.

The daemon reads and writes workspaces while sandboxed code may be changing them, so every path
from a request is walked one component at a time with openat(O_NOFOLLOW) from the workspace's own
directory descriptor; the kernel never follows a link on our behalf. Paths that are absolute or
contain `..` are refused outright. A symlink met on the way is resolved by hand inside the
workspace (a target under /workspace/ or a relative one that stays inside is fine); one that
points anywhere else is refused. Only regular files are read (a FIFO would block the daemon).
Whatever else the kernel answers on the way (a symlink loop, a name longer than the file system
allows, a directory the code made unreadable, a full workspace) becomes an ApplianceError that
says what happened, never a bare OSError: code in the sandbox controls these trees.
"""

from __future__ import annotations

import asyncio
import errno
import os
import shutil
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from appliance.errors import ApplianceError
from appliance.sandbox.errors import UploadTooLarge, WorkspaceFileNotFound, WorkspacePathRefused
from appliance.sandbox.identity import SandboxIdentity
from appliance.sandbox.policy import WORKSPACE

MAX_PATH = 1024
NAME_MAX = 255
"""Longest name of one path component, in bytes (Linux file systems' limit)."""
MAX_SYMLINKS = 32
MAX_LISTED = 10000
MAX_WORKSPACE_ENTRIES = 20000
"""Files and directories a workspace may hold (a tmpfs workspace's nr_inodes, else polled)."""


@dataclass(frozen=True)
class FileEntry:
    path: str
    type: str
    """file, dir or symlink"""
    size: int


def split_path(rel: str) -> list[str]:
    """The components of a request path, or WorkspacePathRefused saying why not."""
    if not rel or len(rel) > MAX_PATH or "\x00" in rel:
        raise WorkspacePathRefused(
            "give a non-empty workspace path of at most 1024 characters, relative to the workspace",
            param="path",
        )
    if rel.startswith("/"):
        raise WorkspacePathRefused(
            f"{rel!r} is absolute; give the path relative to the workspace (for example "
            f"{rel.lstrip('/').removeprefix('workspace/') or 'main.py'!r})",
            param="path",
        )
    parts = [p for p in rel.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise WorkspacePathRefused(
            f"{rel!r} climbs out with '..'; workspace paths stay inside the workspace", param="path"
        )
    if not parts:
        raise WorkspacePathRefused(f"{rel!r} names the workspace itself, not a file", param="path")
    for part in parts:
        if len(part.encode(errors="surrogateescape")) > NAME_MAX:
            raise WorkspacePathRefused(
                f"a name in {rel[:80]!r}... is {len(part.encode(errors='surrogateescape'))} bytes "
                f"long; each name in a workspace path may have at most {NAME_MAX}",
                param="path",
            )
    return parts


def refusal(rel: str, exc: OSError) -> ApplianceError:
    """The error a request gets when the kernel refuses its workspace path with `exc`."""
    shown = rel if len(rel) <= 120 else rel[:117] + "..."
    code = exc.errno
    if code == errno.ENOENT:
        return WorkspaceFileNotFound(
            f"{shown!r} does not exist in the workspace; list the files with "
            "GET /api/sandboxes/{id}/files"
        )
    if code in (errno.ENOSPC, errno.EDQUOT):
        return UploadTooLarge(
            f"the workspace is full: writing {shown!r} would pass its size or file-count quota; "
            "delete files first (or create the sandbox with a smaller data set)"
        )
    if code == errno.EFBIG:
        return UploadTooLarge(f"{shown!r} is larger than a workspace file may be")
    why = {
        errno.ELOOP: "it goes through a symlink loop (too many levels of symlinks)",
        errno.ENAMETOOLONG: "a name in it is longer than the file system allows",
        errno.ENOTDIR: "a part of it that should be a directory is not one",
        errno.EISDIR: "it is a directory, not a file",
        errno.EACCES: "the sandboxed code made it inaccessible (permission denied)",
        errno.EPERM: "the sandboxed code made it inaccessible (operation not permitted)",
    }.get(code or 0, f"the kernel refused it ({exc.strerror or exc})")
    return WorkspacePathRefused(f"{shown!r}: {why}", param="path")


class Workspace:
    """One workspace directory and the safe ways the daemon reads and writes it.

    `path` is where the daemon itself reaches the files; `bind_source` is what bwrap binds at
    /workspace. They differ when the workspace is a size-limited tmpfs held in the daemon's
    mount namespace holder (quota.py): the daemon then goes through /proc/<holder>/root.
    """

    def __init__(
        self,
        path: Path,
        identity: SandboxIdentity,
        *,
        bind_source: Path | None = None,
        quota_bytes: int | None = None,
        unmount: Callable[[], None] | None = None,
    ) -> None:
        self.path = path
        self.identity = identity
        self.bind_source = bind_source or path
        self.quota_bytes = quota_bytes
        """The size cap when the kernel enforces it (a tmpfs); None when it is only polled."""
        self._unmount = unmount

    @classmethod
    def create(cls, root: Path, name: str, identity: SandboxIdentity) -> Workspace:
        path = root / name
        path.mkdir(mode=0o700)
        identity.own_workspace(path)
        return cls(path, identity)

    @property
    def enforced(self) -> bool:
        """Whether a write past the quota fails in the kernel (ENOSPC) rather than being polled."""
        return self.quota_bytes is not None

    # --- safe path walking ------------------------------------------------------------------------

    def _resolve_link(self, dir_parts: list[str], name: str, dir_fd: int, rel: str) -> list[str]:
        """Where a symlink met at `dir_parts`/`name` leads, as workspace path components."""
        target = os.readlink(name, dir_fd=dir_fd)
        outside = WorkspacePathRefused(
            f"{rel!r} goes through a symlink to {target}, outside the workspace", param="path"
        )
        if target.startswith("/"):
            if target != WORKSPACE and not target.startswith(WORKSPACE + "/"):
                raise outside
            start: list[str] = []
            rest = target[len(WORKSPACE) :]
        else:
            start, rest = list(dir_parts), target
        parts = start
        for part in rest.split("/"):
            if part in ("", "."):
                continue
            if part == "..":
                if not parts:
                    raise outside
                parts.pop()
            else:
                parts.append(part)
        return parts

    def _open_parent(self, rel: str, *, create: bool) -> tuple[int, str, list[str]]:
        """A directory fd for the parent of `rel`, the final name, and the parent's components
        inside the workspace (after any symlinks), walked safely."""
        todo = split_path(rel)
        links = 0
        while True:
            fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
            walked: list[str] = []
            restart: list[str] | None = None
            try:
                for i, part in enumerate(todo[:-1]):
                    try:
                        nfd = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
                    except FileNotFoundError:
                        if not create:
                            raise WorkspaceFileNotFound(
                                f"{rel!r} does not exist in the workspace (no directory "
                                f"{'/'.join([*walked, part])!r})"
                            ) from None
                        os.mkdir(part, 0o755, dir_fd=fd)
                        self._chown_at(fd, part)
                        nfd = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
                    except OSError as exc:
                        if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                            raise
                        st = os.stat(part, dir_fd=fd, follow_symlinks=False)
                        if not stat.S_ISLNK(st.st_mode):
                            raise WorkspacePathRefused(
                                f"{rel!r}: {'/'.join([*walked, part])!r} is not a directory",
                                param="path",
                            ) from None
                        restart = self._resolve_link(walked, part, fd, rel) + todo[i + 1 :]
                        break
                    os.close(fd)
                    fd = nfd
                    walked.append(part)
                if restart is None:
                    return fd, todo[-1], walked
            except BaseException:
                os.close(fd)
                raise
            os.close(fd)
            links += 1
            if links > MAX_SYMLINKS or not restart:
                raise WorkspacePathRefused(f"{rel!r}: too many symlinks", param="path")
            todo = restart

    def _chown_at(self, dir_fd: int, name: str) -> None:
        if self.identity.daemon_is_root:
            os.chown(
                name,
                self.identity.host_uid,
                self.identity.host_gid,
                dir_fd=dir_fd,
                follow_symlinks=False,
            )

    # --- file operations ------------------------------------------------------------------------

    def open_regular(self, rel: str) -> int:
        """A read-only descriptor of the regular file `rel` names (the caller closes it)."""
        try:
            return self._open_regular(rel, 0)
        except OSError as exc:
            raise refusal(rel, exc) from None

    def _open_regular(self, rel: str, depth: int) -> int:
        dir_fd, name, walked = self._open_parent(rel, create=False)
        try:
            try:
                fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=dir_fd)
            except OSError as exc:
                if exc.errno != errno.ELOOP:
                    raise
                target = self._link_target(rel, walked, name, dir_fd, depth)
                return self._open_regular(target, depth + 1)
        finally:
            os.close(dir_fd)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise WorkspacePathRefused(f"{rel!r} is not a regular file", param="path")
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _link_target(self, rel: str, walked: list[str], name: str, dir_fd: int, depth: int) -> str:
        """The workspace path the last symlink of `rel` leads to; refused past MAX_SYMLINKS hops
        (a loop) or when it names the workspace itself."""
        if depth >= MAX_SYMLINKS:
            raise WorkspacePathRefused(
                f"{rel!r}: too many symlinks (a symlink loop?)", param="path"
            )
        target = "/".join(self._resolve_link(walked, name, dir_fd, rel))
        if not target:
            raise WorkspacePathRefused(
                f"{rel!r} is a symlink to the workspace itself, not a file", param="path"
            )
        return target

    def read_file(self, rel: str, max_bytes: int) -> bytes:
        """The bytes of `rel`, refused (UploadTooLarge) when there are more than `max_bytes`."""
        fd = self.open_regular(rel)
        with os.fdopen(fd, "rb") as f:
            return read_capped(f.fileno(), rel, max_bytes)

    def write_file(self, rel: str, data: bytes, *, executable: bool = False) -> None:
        """Write `rel` (its parents created), mode 0644, or 0755 when `executable`."""
        try:
            self._write_file(rel, data, 0, executable)
        except OSError as exc:
            raise refusal(rel, exc) from None

    def _write_file(self, rel: str, data: bytes, depth: int, executable: bool = False) -> None:
        dir_fd, name, walked = self._open_parent(rel, create=True)
        try:
            flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_NONBLOCK
            try:
                fd = os.open(name, flags, 0o644, dir_fd=dir_fd)
            except OSError as exc:
                if exc.errno == errno.EISDIR:
                    raise WorkspacePathRefused(f"{rel!r} is a directory", param="path") from None
                if exc.errno != errno.ELOOP:
                    raise
                target = self._link_target(rel, walked, name, dir_fd, depth)
                os.close(dir_fd)
                dir_fd = -1
                return self._write_file(target, data, depth + 1, executable)
            with os.fdopen(fd, "wb") as f:
                if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                    raise WorkspacePathRefused(f"{rel!r} is not a regular file", param="path")
                f.write(data)
                if executable:
                    os.fchmod(f.fileno(), 0o755)
            self._chown_at(dir_fd, name)
        finally:
            if dir_fd >= 0:
                os.close(dir_fd)

    def list_files(self) -> list[FileEntry]:
        out: list[FileEntry] = []
        for dirpath, dirnames, filenames, dfd in os.fwalk(self.path, follow_symlinks=False):
            rel_dir = os.path.relpath(dirpath, self.path)
            for name in sorted(dirnames) + sorted(filenames):
                try:
                    st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
                except OSError:
                    continue
                kind = (
                    "dir"
                    if stat.S_ISDIR(st.st_mode)
                    else "symlink"
                    if stat.S_ISLNK(st.st_mode)
                    else "file"
                )
                path = name if rel_dir == "." else f"{rel_dir}/{name}"
                out.append(FileEntry(path, kind, 0 if kind == "dir" else st.st_size))
                if len(out) >= MAX_LISTED:
                    return out
        return out

    def usage(self, stop_above: int | None = None) -> tuple[int, int]:
        """(bytes on disk, entries); stops counting early once above `stop_above` bytes."""
        if self.enforced:  # its own tmpfs: the file system's counters are exact and instant
            st = os.statvfs(self.path)
            return (st.f_blocks - st.f_bfree) * st.f_frsize, max(0, st.f_files - st.f_ffree - 1)
        total, entries = 0, 0
        for _dirpath, dirnames, filenames, dfd in os.fwalk(self.path, follow_symlinks=False):
            for name in dirnames + filenames:
                entries += 1
                try:
                    total += os.stat(name, dir_fd=dfd, follow_symlinks=False).st_blocks * 512
                except OSError:
                    continue
            if stop_above is not None and total > stop_above:
                break
        return total, entries

    def full(self) -> bool:
        """Whether a kernel-enforced quota is used up (no room for another block or file)."""
        if not self.enforced:
            return False
        try:
            st = os.statvfs(self.path)
        except OSError:
            return False
        return st.f_bavail == 0 or st.f_favail == 0

    def destroy(self) -> None:
        if self._unmount is not None:
            unmount, self._unmount = self._unmount, None
            unmount()
        remove_tree(self.bind_source)


def read_capped(fd: int, rel: str, max_bytes: int) -> bytes:
    """Read an open file to its end, refusing it as soon as it has more than `max_bytes`.

    The size is checked before anything is read and again while reading, so a file that grows
    after the check never costs more than `max_bytes` + one chunk of memory.
    """
    size = os.fstat(fd).st_size
    if size > max_bytes:
        raise UploadTooLarge(
            f"{rel!r} is {size} bytes, above the {max_bytes}-byte limit of a file transfer "
            "(sandbox.max_file_mb)"
        )
    chunks: list[bytes] = []
    total = 0
    while True:
        chunk = os.read(fd, min(1 << 20, max_bytes + 1 - total))
        if not chunk:
            return b"".join(chunks)
        total += len(chunk)
        if total > max_bytes:
            raise UploadTooLarge(
                f"{rel!r} grew past the {max_bytes}-byte limit of a file transfer while it was "
                "read (sandbox.max_file_mb)"
            )
        chunks.append(chunk)


_removals: set[asyncio.Future[None]] = set()


def remove_later(workspace: Workspace) -> None:
    """Remove a finished run's workspace in a worker thread, after the response has gone out."""
    task = asyncio.ensure_future(asyncio.to_thread(workspace.destroy))
    _removals.add(task)
    task.add_done_callback(_removals.discard)


async def wait_for_removals() -> None:
    """Let every pending workspace removal finish (at shutdown)."""
    if _removals:
        await asyncio.gather(*_removals, return_exceptions=True)


def remove_tree(path: Path) -> None:
    """rm -rf that also gets through directories the sandbox made read-only."""

    def fix_and_retry(func: Callable[[str], object], target: str, _exc: object) -> None:
        parent = os.path.dirname(target)
        try:
            os.chmod(parent, 0o700)
            if os.path.isdir(target) and not os.path.islink(target):
                os.chmod(target, 0o700)
        except OSError:
            pass
        func(target)

    if path.exists() or path.is_symlink():
        shutil.rmtree(path, onerror=fix_and_retry)
