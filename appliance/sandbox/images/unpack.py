"""One layer tar unpacked into a fresh directory, refusing what could escape or surprise.

A layer is untrusted input (a registry or an archive chose its bytes). Each entry is checked
before anything is written, and the whole layer is refused (the directory removed) when one
entry is bad:

- names: absolute paths, `..` components, NUL bytes and empty names are refused;
- parents: an entry whose parent is a symlink (or a file) in the layer is refused, so nothing is
  ever written through a link; every write is at a path made only of real directories we made;
- links: symlinks are kept verbatim and never followed here (inside the sandbox an absolute
  link resolves in the image's own root, where it cannot leave it); hard links must name a
  regular file unpacked earlier in the same layer, checked like any name;
- device nodes and FIFOs are left out (neutralised): a sandbox has its own minimal /dev;
- modes: setuid, setgid and sticky bits on files are dropped; ownership is never applied (the
  files belong to the store); the owner always keeps read/write so the store can remove them;
- size: the regular files together may not pass `max_bytes`, entries may not pass `max_entries`,
  names may not be longer than MAX_NAME or nested deeper than MAX_DEPTH.

Whiteouts (`.wh.NAME`, `.wh..wh..opq`) are kept as empty marker files: store.py applies them
when it merges an image's layers.
"""

from __future__ import annotations

import os
import shutil
import stat
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from appliance.sandbox.images.errors import ImageRefused, LayerTooLarge

WHITEOUT = ".wh."
OPAQUE = ".wh..wh..opq"
CHUNK = 1024 * 1024
MAX_NAME = 2048
"""Longest entry name accepted (with the store's own path it stays under PATH_MAX)."""
MAX_DEPTH = 128
"""Deepest nesting accepted; no real image comes near it, a hostile one could exhaust the merge."""


@dataclass
class LayerStats:
    files: int = 0
    dirs: int = 0
    links: int = 0
    whiteouts: int = 0
    skipped: int = 0
    """Device nodes and FIFOs left out."""
    bytes: int = 0


def entry_parts(name: str) -> list[str]:
    """The components of a tar entry's name, or ImageRefused when it could leave the layer."""
    if "\x00" in name:
        raise ImageRefused(f"layer entry {name!r} has a NUL byte in its name")
    if name.startswith("/"):
        raise ImageRefused(f"layer entry {name!r} is an absolute path; the layer is refused")
    if len(name) > MAX_NAME:
        raise ImageRefused(f"layer entry {name[:80]!r}... has a name over {MAX_NAME} bytes")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if len(parts) > MAX_DEPTH:
        raise ImageRefused(f"layer entry {name[:80]!r}... is nested over {MAX_DEPTH} deep")
    if ".." in parts:
        raise ImageRefused(f"layer entry {name!r} climbs out with '..'; the layer is refused")
    if not parts:
        return []
    for part in parts:
        if (
            part.startswith(WHITEOUT)
            and part != OPAQUE
            and part[len(WHITEOUT) :] in ("", ".", "..")
        ):
            raise ImageRefused(f"layer entry {name!r} is a whiteout of nothing")
    return parts


class LayerWriter:
    """Writes checked entries under `root`, which it owns alone while unpacking."""

    def __init__(self, root: Path, max_bytes: int, max_entries: int) -> None:
        self.root = root
        self.max_bytes = max_bytes
        self.max_entries = max_entries
        self.stats = LayerStats()
        self.dir_modes: dict[str, int] = {}
        self.entries = 0

    def _parent(self, parts: list[str], name: str) -> str:
        """The host path of the entry's parent, made of real directories (created as needed)."""
        path = str(self.root)
        for part in parts[:-1]:
            path = os.path.join(path, part)
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                os.mkdir(path)
                os.chmod(path, 0o755)  # explicit: the daemon's umask is 077
                continue
            if not stat.S_ISDIR(st.st_mode):
                what = "a symlink" if stat.S_ISLNK(st.st_mode) else "not a directory"
                raise ImageRefused(
                    f"layer entry {name!r} goes through {part!r}, which is {what} in the layer; "
                    "nothing is written through links, so the layer is refused"
                )
        return path

    def _clear(self, path: str, keep_dir: bool) -> None:
        """Make room at `path`: a later entry of one name replaces the earlier one."""
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return
        if stat.S_ISDIR(st.st_mode):
            if keep_dir:
                return
            shutil.rmtree(path)
        else:
            os.unlink(path)

    def add(self, tar: tarfile.TarFile, member: tarfile.TarInfo) -> None:
        self.entries += 1
        if self.entries > self.max_entries:
            raise LayerTooLarge(f"the layer has more than {self.max_entries} entries")
        parts = entry_parts(member.name)
        if not parts:
            return  # the layer's root itself
        parent = self._parent(parts, member.name)
        target = os.path.join(parent, parts[-1])
        if member.isdir():
            self._clear(target, keep_dir=True)
            if not os.path.isdir(target):
                os.mkdir(target, 0o755)
            self.dir_modes[target] = (member.mode & 0o1777) | 0o700
            self.stats.dirs += 1
        elif member.isreg():
            self._write_file(tar, member, target)
        elif member.issym():
            if "\x00" in member.linkname or not member.linkname:
                raise ImageRefused(f"symlink {member.name!r} has an empty or NUL target")
            self._clear(target, keep_dir=False)
            os.symlink(member.linkname, target)
            self.stats.links += 1
        elif member.islnk():
            self._hard_link(member, target)
        else:  # character and block devices, FIFOs, anything else: left out
            self.stats.skipped += 1

    def _write_file(self, tar: tarfile.TarFile, member: tarfile.TarInfo, target: str) -> None:
        self.stats.bytes += member.size
        if self.stats.bytes > self.max_bytes:
            raise LayerTooLarge(
                f"the layer unpacks to more than {self.max_bytes // (1024 * 1024)} MB "
                "(sandbox.max_layer_mb); raise the limit or use a smaller image"
            )
        if parts_whiteout(member.name):
            self.stats.whiteouts += 1
        self._clear(target, keep_dir=False)
        source = tar.extractfile(member)
        if source is None:
            raise ImageRefused(f"layer entry {member.name!r} has no data")
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "wb") as out:
            copy_bounded(source, out, member.size)
            os.fchmod(out.fileno(), (member.mode & 0o777) | 0o600)
        self.stats.files += 1

    def _hard_link(self, member: tarfile.TarInfo, target: str) -> None:
        link_parts = entry_parts(member.linkname)
        if not link_parts:
            raise ImageRefused(f"hard link {member.name!r} points at the layer's root")
        source = os.path.join(str(self.root), *link_parts)
        # every component of the source must be a real directory we made, the last a file
        self._parent(link_parts, member.linkname)
        try:
            st = os.lstat(source)
        except FileNotFoundError:
            raise ImageRefused(
                f"hard link {member.name!r} points at {member.linkname!r}, which is not an "
                "earlier file of the same layer"
            ) from None
        if not stat.S_ISREG(st.st_mode):
            raise ImageRefused(f"hard link {member.name!r} points at a non-file")
        self._clear(target, keep_dir=False)
        os.link(source, target, follow_symlinks=False)
        self.stats.links += 1

    def finish(self) -> None:
        # deepest first, so a read-only directory is closed only after its children exist
        for path in sorted(self.dir_modes, key=lambda p: p.count("/"), reverse=True):
            os.chmod(path, self.dir_modes[path])


def parts_whiteout(name: str) -> bool:
    return name.rstrip("/").rsplit("/", 1)[-1].startswith(WHITEOUT)


def copy_bounded(source: IO[bytes], out: IO[bytes], size: int) -> None:
    left = size
    while left > 0:
        chunk = source.read(min(CHUNK, left))
        if not chunk:
            raise ImageRefused("a layer entry ends before its declared size")
        out.write(chunk)
        left -= len(chunk)


def unpack_layer(
    blob: Path, dest: Path, *, max_bytes: int, max_entries: int = 500_000
) -> LayerStats:
    """Unpack the layer tar `blob` (plain, gzip, bzip2 or xz) into `dest`, which must not exist.

    On any refusal `dest` is removed and the error raised; nothing is written outside it.
    """
    dest.mkdir()
    dest.chmod(0o755)
    writer = LayerWriter(dest, max_bytes, max_entries)
    try:
        with blob.open("rb") as raw, tarfile.open(fileobj=raw, mode="r|*") as tar:
            for member in tar:
                writer.add(tar, member)
        writer.finish()
    except (tarfile.TarError, EOFError, OSError, ValueError, zlib.error) as exc:
        shutil.rmtree(dest, ignore_errors=True)
        raise ImageRefused(f"the layer {blob.name} is not a readable tar archive: {exc}") from exc
    except BaseException:
        shutil.rmtree(dest, ignore_errors=True)
        raise
    return writer.stats
