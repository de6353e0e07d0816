"""The image store under `<state>/oci/`: blobs, unpacked layers, merged roots and image records.

    oci/blobs/sha256/<hex>   every manifest, config and layer blob, verified on arrival
    oci/partial/<hex>        a blob being downloaded (kept after an interrupted pull: resumed)
    oci/layers/<hex>/        each layer blob unpacked once (unpack.py), shared by every image
    oci/roots/<hex>/         an image's root filesystem: its layers merged in order, files hard
                             links into layers/ (no copies), whiteouts and opaque dirs applied
    oci/images.json          references -> manifest digest, and each image's record

Images and layers are reference-counted by the records themselves: removing an image's last
reference deletes its record and its root, and `collect` then deletes every layer and blob no
remaining image names. All of it runs in threads (blocking file work), one writer at a time.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import os
import re
import shutil
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import msgspec

from appliance.sandbox.images.errors import DigestMismatch, ImageNotFound, ImageRefused
from appliance.sandbox.images.manifest import (
    ImageConfig,
    Manifest,
    RuntimeConfig,
    parse_config,
    parse_manifest,
)
from appliance.sandbox.images.reference import check_digest, parse_ref
from appliance.sandbox.images.unpack import OPAQUE, WHITEOUT, unpack_layer

MOUNT_DIRS = ("proc", "dev", "tmp", "workspace", "opt/appliance", "etc")
"""Directories every root needs as mount points (the root itself is bound read-only)."""
MOUNT_FILES = ("etc/passwd", "etc/group", "etc/hosts", "etc/resolv.conf")
"""Files the sandbox's own versions are bound over."""


class ImageRecord(msgspec.Struct, kw_only=True):
    digest: str
    """The manifest's digest: the image's identity."""
    config_digest: str
    layers: list[str]
    size: int
    """Compressed size of the layers and config."""
    config: RuntimeConfig
    architecture: str = ""
    os: str = ""
    created_at: float = 0.0


class StoreIndex(msgspec.Struct, kw_only=True):
    refs: dict[str, str] = msgspec.field(default_factory=dict)
    images: dict[str, ImageRecord] = msgspec.field(default_factory=dict)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1024 * 1024):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


def _hex(digest: str) -> str:
    return check_digest(digest).split(":", 1)[1]


class ImageStore:
    def __init__(self, root: Path, *, max_layer_bytes: int) -> None:
        self.root = root
        self.max_layer_bytes = max_layer_bytes
        self.lock = threading.RLock()
        """Held while the index, layers or roots change (one writer at a time)."""
        self._blob_locks: dict[str, threading.Lock] = {}
        self._pins: collections.Counter[str] = collections.Counter()
        """Blobs a pull is fetching (by hex digest): `collect` keeps them though no image names
        them yet."""
        for sub in ("blobs/sha256", "partial", "layers", "roots"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        os.chmod(root, 0o700)

    # --- blobs -------------------------------------------------------------------------------------

    def blob_path(self, digest: str) -> Path:
        return self.root / "blobs" / "sha256" / _hex(digest)

    def partial_path(self, digest: str) -> Path:
        return self.root / "partial" / _hex(digest)

    def blob_lock(self, digest: str) -> threading.Lock:
        """Held while blob `digest` is downloaded or copied: two pulls (or a pull and an import)
        of images sharing a layer never write its partial file at once."""
        with self.lock:
            return self._blob_locks.setdefault(_hex(digest), threading.Lock())

    @contextlib.contextmanager
    def pinned(self, digests: list[str]) -> Iterator[None]:
        """Keep `digests` through any `collect` until the block ends (a pull in progress)."""
        keys = [_hex(d) for d in digests]
        with self.lock:
            self._pins.update(keys)
        try:
            yield
        finally:
            with self.lock:
                self._pins.subtract(keys)
                self._pins += collections.Counter()  # drops the zero counts

    def has_blob(self, digest: str) -> bool:
        return self.blob_path(digest).is_file()

    def commit_partial(self, digest: str) -> Path:
        """Verify the finished download of `digest` and move it into blobs/ (or refuse it)."""
        part = self.partial_path(digest)
        actual = sha256_file(part)
        if actual != digest:
            part.unlink(missing_ok=True)
            raise DigestMismatch(
                f"blob {digest} arrived with digest {actual}: corrupted in transit or by the "
                "source; it was discarded, pull again or check the source"
            )
        target = self.blob_path(digest)
        os.replace(part, target)
        os.chmod(target, 0o600)
        return target

    def put_stream(self, digest: str, source: IO[bytes], limit: int) -> Path:
        """Copy at most `limit` bytes from `source` as blob `digest`, verified."""
        with self.blob_lock(digest):
            return self._put_stream(digest, source, limit)

    def _put_stream(self, digest: str, source: IO[bytes], limit: int) -> Path:
        if self.has_blob(digest):
            return self.blob_path(digest)
        part = self.partial_path(digest)
        copied = 0
        with part.open("wb") as out:
            while chunk := source.read(1024 * 1024):
                copied += len(chunk)
                if copied > limit:
                    out.close()
                    part.unlink(missing_ok=True)
                    raise DigestMismatch(f"blob {digest} is larger than its descriptor says")
                out.write(chunk)
        return self.commit_partial(digest)

    def put_bytes(self, digest: str, data: bytes) -> Path:
        actual = "sha256:" + hashlib.sha256(data).hexdigest()
        if actual != check_digest(digest):
            raise DigestMismatch(f"document {digest} has digest {actual}; it was refused")
        target = self.blob_path(digest)
        if not target.is_file():
            part = self.partial_path(digest)
            part.write_bytes(data)
            os.replace(part, target)
        return target

    def read_blob(self, digest: str) -> bytes:
        return self.blob_path(digest).read_bytes()

    # --- images ------------------------------------------------------------------------------------

    def _load(self) -> StoreIndex:
        path = self.root / "images.json"
        if not path.is_file():
            return StoreIndex()
        return msgspec.json.decode(path.read_bytes(), type=StoreIndex)

    def _save(self, index: StoreIndex) -> None:
        path = self.root / "images.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(msgspec.json.encode(index))
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)

    def add_image(self, ref: str, manifest_digest: str) -> ImageRecord:
        """Record an image whose manifest, config and layers are all in blobs/: unpack its
        layers (once each), merge its root, and point `ref` at it."""
        manifest = parse_manifest(self.read_blob(manifest_digest))
        config = parse_config(self.read_blob(manifest.config.digest))
        with self.lock:
            for layer in manifest.layers:
                self.unpacked_layer(layer.digest)
            try:
                self._merge_root(manifest_digest, manifest)
            except OSError as exc:
                raise ImageRefused(
                    f"the layers of {ref} cannot be merged into a root file system ({exc})"
                ) from exc
            index = self._load()
            record = index.images.get(manifest_digest) or self._record(
                manifest_digest, manifest, config
            )
            index.images[manifest_digest] = record
            index.refs[ref] = manifest_digest
            self._save(index)
            return record

    def _record(self, digest: str, manifest: Manifest, config: ImageConfig) -> ImageRecord:
        return ImageRecord(
            digest=digest,
            config_digest=manifest.config.digest,
            layers=[d.digest for d in manifest.layers],
            size=manifest.config.size + sum(d.size for d in manifest.layers),
            config=config.config,
            architecture=config.architecture,
            os=config.os,
            created_at=time.time(),
        )

    def unpacked_layer(self, digest: str) -> Path:
        dest = self.root / "layers" / _hex(digest)
        if not dest.is_dir():
            work = dest.with_name(dest.name + ".unpacking")
            if work.exists():
                shutil.rmtree(work)
            unpack_layer(self.blob_path(digest), work, max_bytes=self.max_layer_bytes)
            os.replace(work, dest)
        return dest

    def root_path(self, manifest_digest: str) -> Path:
        return self.root / "roots" / _hex(manifest_digest)

    def _merge_root(self, manifest_digest: str, manifest: Manifest) -> Path:
        dest = self.root_path(manifest_digest)
        if dest.is_dir():
            return dest
        work = dest.with_name(dest.name + ".merging")
        if work.exists():
            shutil.rmtree(work)
        work.mkdir()
        modes: dict[str, int] = {}
        for layer in manifest.layers:
            apply_layer(self.root / "layers" / _hex(layer.digest), work, modes)
        ensure_mount_points(work, modes)
        for path in sorted(modes, key=lambda p: p.count("/"), reverse=True):
            os.chmod(path, modes[path])
        os.chmod(work, 0o755)  # the sandbox's "/" (the daemon's umask is 077)
        os.replace(work, dest)
        return dest

    def resolve(self, ref: str) -> ImageRecord:
        """The image `ref` names: a reference, its canonical spelling, or a digest (or prefix)."""
        index = self._load()
        text = ref.strip()
        if text.startswith("sha256:") and len(text) > 7:
            hits = [d for d in index.images if d.startswith(text)]
            if len(hits) == 1:
                return index.images[hits[0]]
        elif text:
            digest = index.refs.get(text) or index.refs.get(str(parse_ref(text)))
            if digest is not None and digest in index.images:
                return index.images[digest]
        raise ImageNotFound(
            f"no image {ref!r} in the store; pull it (appliance images pull REF) or import it "
            "(appliance images import PATH); `appliance images list` shows what is there",
            param="image",
        )

    def images(self) -> Iterator[tuple[list[str], ImageRecord]]:
        index = self._load()
        for digest, record in index.images.items():
            yield sorted(r for r, d in index.refs.items() if d == digest), record

    def remove(self, ref: str) -> list[str]:
        """Drop `ref` (a reference or a digest: then every reference to it); when nothing names
        the image any more, its record and root go, and then what no image uses. Returns the
        references removed."""
        with self.lock:
            record = self.resolve(ref)
            index = self._load()
            if ref.startswith("sha256:"):
                gone = [r for r, d in index.refs.items() if d == record.digest]
            else:
                spellings = dict.fromkeys((ref, str(parse_ref(ref))))
                gone = [r for r in spellings if index.refs.get(r) == record.digest]
            for r in gone:
                del index.refs[r]
            self._save(index)
        self.collect()
        return gone

    def collect(self) -> int:
        """Delete images nothing names, then layers, roots, blobs and partial downloads no image
        uses. Returns the bytes freed (as counted on disk)."""
        with self.lock:
            index = self._load()
            named = set(index.refs.values())
            for digest in [d for d in index.images if d not in named]:
                del index.images[digest]
            self._save(index)
            keep_roots = {_hex(d) for d in index.images}
            keep_blobs = set(keep_roots)
            keep_layers: set[str] = set()
            for rec in index.images.values():
                keep_blobs.add(_hex(rec.config_digest))
                keep_layers.update(_hex(d) for d in rec.layers)
            keep_blobs |= keep_layers | set(self._pins)
            keep_layers |= set(self._pins)
            freed = 0
            for sub, keep in (
                ("roots", keep_roots),
                ("layers", keep_layers),
                ("blobs/sha256", keep_blobs),
            ):
                for entry in (self.root / sub).iterdir():
                    if entry.name not in keep:
                        freed += tree_size(entry)
                        remove_entry(entry)
            return freed

    def prune_partial(self) -> int:
        """Delete interrupted downloads (their pulls would have resumed them), but not one being
        written now: a blob a pull holds, an upload or import of the last hour."""
        freed = 0
        recent = time.time() - 3600
        with self.lock:
            for entry in (self.root / "partial").iterdir():
                lock = self._blob_locks.get(entry.name)
                if entry.name in self._pins or (lock is not None and lock.locked()):
                    continue
                if not re.fullmatch(r"[0-9a-f]{64}", entry.name) and (
                    entry.stat().st_mtime > recent
                ):
                    continue
                freed += tree_size(entry)
                remove_entry(entry)
        return freed

    def disk_usage(self) -> int:
        return tree_size(self.root / "blobs") + tree_size(self.root / "layers")


# --- merging layers into a root ---------------------------------------------------------------------


def remove_entry(path: Path | str) -> None:
    """Remove a file, link or whole tree at `path` without following links."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(path)
    else:
        os.unlink(path)


def tree_size(path: Path) -> int:
    total = 0
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return 0
    if not stat.S_ISDIR(st.st_mode):
        return st.st_size
    for dirpath, _, files in os.walk(path):
        for name in files:
            with contextlib.suppress(FileNotFoundError):
                total += os.lstat(os.path.join(dirpath, name)).st_size
    return total


def apply_layer(layer: Path, root: Path, modes: dict[str, int]) -> None:
    """Lay `layer` over `root`: opaque dirs emptied, whiteouts delete, entries replace.

    Only paths under `root` made by this merge are touched, each checked with lstat: a symlink
    in the root is replaced, never followed.
    """
    _apply_dir(str(layer), str(root), modes)


def _apply_dir(src: str, dst: str, modes: dict[str, int]) -> None:
    entries = sorted(os.scandir(src), key=lambda e: e.name)
    if any(e.name == OPAQUE for e in entries):
        for child in os.listdir(dst):
            remove_entry(os.path.join(dst, child))
    for entry in entries:
        if entry.name == OPAQUE:
            continue
        if entry.name.startswith(WHITEOUT):
            remove_entry(os.path.join(dst, entry.name[len(WHITEOUT) :]))
            continue
        target = os.path.join(dst, entry.name)
        st = entry.stat(follow_symlinks=False)
        if stat.S_ISDIR(st.st_mode):
            try:
                existing = os.lstat(target)
                is_dir = stat.S_ISDIR(existing.st_mode)
            except FileNotFoundError:
                is_dir = False
            if not is_dir:
                remove_entry(target)
                os.mkdir(target)
                os.chmod(target, 0o755)
            modes[target] = stat.S_IMODE(st.st_mode) | 0o700
            _apply_dir(entry.path, target, modes)
            continue
        remove_entry(target)
        modes.pop(target, None)
        if stat.S_ISLNK(st.st_mode):
            os.symlink(os.readlink(entry.path), target)
        else:
            os.link(entry.path, target, follow_symlinks=False)


def ensure_mount_points(root: Path, modes: dict[str, int]) -> None:
    """Make the directories and files bwrap mounts over exist as real ones in the root (a
    symlink there, or a file where a directory must be, is replaced)."""
    for rel in MOUNT_DIRS:
        path = str(root)
        for part in rel.split("/"):
            path = os.path.join(path, part)
            try:
                if stat.S_ISDIR(os.lstat(path).st_mode):
                    continue
                remove_entry(path)
            except FileNotFoundError:
                pass
            os.mkdir(path)
            os.chmod(path, 0o755)
            modes[path] = 0o755
    for rel in MOUNT_FILES:
        path = os.path.join(str(root), rel)
        try:
            if stat.S_ISREG(os.lstat(path).st_mode):
                continue
            remove_entry(path)
        except FileNotFoundError:
            pass
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
        os.fchmod(fd, 0o644)
        os.close(fd)


class StoreReport(msgspec.Struct, kw_only=True):
    images: int = 0
    bytes: int = 0
    problems: list[str] = msgspec.field(default_factory=list)
    """Images that cannot run, each with why (a missing root, blob or layer)."""


def inspect_store(root: Path) -> StoreReport:
    """What `appliance doctor` says of the store at `root`, read without changing anything."""
    report = StoreReport()
    index_path = root / "images.json"
    if not index_path.is_file():
        return report
    try:
        index = msgspec.json.decode(index_path.read_bytes(), type=StoreIndex)
    except (OSError, msgspec.DecodeError) as exc:
        report.problems.append(f"{index_path} is unreadable ({exc})")
        return report
    report.images = len(index.images)
    report.bytes = tree_size(root / "blobs") + tree_size(root / "layers")
    for digest, rec in index.images.items():
        names = ", ".join(sorted(r for r, d in index.refs.items() if d == digest)) or digest
        missing = [
            what
            for what, path in (
                ("its root filesystem", root / "roots" / _hex(digest)),
                *((f"layer {d[:19]}", root / "layers" / _hex(d)) for d in rec.layers),
            )
            if not path.is_dir()
        ]
        if missing:
            report.problems.append(f"{names}: {', '.join(missing)} missing")
    return report
