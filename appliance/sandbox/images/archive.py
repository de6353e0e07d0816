"""Import images carried on a disk: OCI image layouts and `docker save` archives.

Both come as a tar (what `POST /api/images/import` receives) or, for library use, a directory.
Names inside them are looked up, never joined onto host paths unchecked: a tar's members are
found by name in the archive itself, a directory's files through real directories only.

- An OCI layout (`oci-layout`, `index.json`, `blobs/sha256/...`; also what Docker 25+ saves)
  has its blobs copied into the store, each verified against its digest; every manifest in the
  index (an index inside resolved to this host's platform) becomes an image, named by its
  `org.opencontainers.image.ref.name` annotation or the name given.
- A classic `docker save` archive (`manifest.json` with Config, RepoTags and Layers) has
  uncompressed layers and no manifest: the store gets each layer and the config as blobs under
  their sha256, and an OCI manifest written here names them.
"""

from __future__ import annotations

import hashlib
import os
import stat
import tarfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

import msgspec

from appliance.sandbox.images.errors import ImageRefused
from appliance.sandbox.images.manifest import (
    INDEX_TYPES,
    OCI_MANIFEST,
    Descriptor,
    Index,
    decode,
    media_type,
    pick_platform,
)
from appliance.sandbox.images.reference import check_digest, parse_ref
from appliance.sandbox.images.store import ImageRecord, ImageStore
from appliance.sandbox.images.unpack import entry_parts

REF_ANNOTATION = "org.opencontainers.image.ref.name"
MAX_DOCUMENT = 4 * 1024 * 1024


class DockerSaveEntry(msgspec.Struct):
    Config: str
    Layers: list[str]
    RepoTags: list[str] | None = None


class ArchiveFiles:
    """Regular files of a tar or a directory, by their normalised names."""

    def __init__(self, path: Path, label: str | None = None) -> None:
        self.path = path
        self.tar: tarfile.TarFile | None = None
        self.members: dict[str, tarfile.TarInfo] = {}
        if path.is_dir():
            return
        try:
            self.tar = tarfile.open(path, mode="r:*")  # noqa: SIM115 - closed by close()
            for m in self.tar.getmembers():
                if m.isreg():
                    self.members["/".join(entry_parts(m.name))] = m
        except (tarfile.TarError, OSError, EOFError):
            raise ImageRefused(
                f"{label or path.name} is not a tar archive (plain, gzip, bzip2 or xz) or an "
                "image directory; give an OCI layout or the output of `docker save`"
            ) from None

    def close(self) -> None:
        if self.tar is not None:
            self.tar.close()

    def exists(self, name: str) -> bool:
        try:
            with self.open(name):
                return True
        except ImageRefused:
            return False

    @contextmanager
    def open(self, name: str) -> Iterator[IO[bytes]]:
        key = "/".join(entry_parts(name))
        if self.tar is not None:
            member = self.members.get(key)
            f = self.tar.extractfile(member) if member is not None else None
            if f is None:
                raise ImageRefused(f"the archive has no file {name!r}")
            with f:
                yield f
            return
        path = str(self.path)
        for part in key.split("/"):
            path = os.path.join(path, part)
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                raise ImageRefused(f"the image directory has no file {name!r}") from None
            if stat.S_ISLNK(st.st_mode):
                raise ImageRefused(f"{name!r} in the image directory is a symlink; refused")
        with open(path, "rb") as f:
            yield f

    def read(self, name: str, limit: int = MAX_DOCUMENT) -> bytes:
        with self.open(name) as f:
            data = f.read(limit + 1)
        if len(data) > limit:
            raise ImageRefused(f"{name!r} is larger than a manifest or config may be")
        return data


def import_archive(
    store: ImageStore, path: Path, name: str | None = None, *, label: str | None = None
) -> list[ImageRecord]:
    """Import every image in the archive or directory at `path`; `name` names the first one.
    `label` is how errors name the archive (an upload's temporary file means nothing to its
    sender)."""
    files = ArchiveFiles(path, label)
    try:
        if files.exists("index.json") and files.exists("oci-layout"):
            return _import_layout(store, files, name)
        if files.exists("manifest.json"):
            return _import_docker_save(store, files, name)
    finally:
        files.close()
    raise ImageRefused(
        f"{label or path.name} is neither an OCI layout (index.json, oci-layout) nor a "
        "`docker save` archive (manifest.json)"
    )


def _copy_blob(store: ImageStore, files: ArchiveFiles, d: Descriptor, limit: int) -> None:
    check_digest(d.digest)
    if store.has_blob(d.digest):
        return
    if d.size > limit:
        raise ImageRefused(f"blob {d.digest} is {d.size} bytes, above the store's limit")
    with files.open(f"blobs/sha256/{d.digest.split(':', 1)[1]}") as f:
        store.put_stream(d.digest, f, d.size)


def _ref_name(given: str | None, annotation: str | None, digest: str) -> str:
    if given:
        return str(parse_ref(given))
    if annotation and ("/" in annotation or ":" in annotation):
        try:
            return str(parse_ref(annotation))
        except ImageRefused:
            pass
    tag = annotation if annotation and "/" not in annotation else "latest"
    try:
        return str(parse_ref(f"localhost/imported-{digest[7:19]}:{tag}"))
    except ImageRefused:
        return f"localhost/imported-{digest[7:19]}:latest"


def _import_layout(store: ImageStore, files: ArchiveFiles, name: str | None) -> list[ImageRecord]:
    index = decode(files.read("index.json"), Index, "index.json")
    assert isinstance(index, Index)
    out: list[ImageRecord] = []
    limit = store.max_layer_bytes
    for top in index.manifests:
        d = top
        check_digest(d.digest)
        data = files.read(f"blobs/sha256/{d.digest[7:]}")
        if media_type(data) in INDEX_TYPES:
            store.put_bytes(d.digest, data)
            d = pick_platform(data)
            data = files.read(f"blobs/sha256/{check_digest(d.digest)[7:]}")
        store.put_bytes(d.digest, data)
        manifest = decode(data, _ManifestRefs, "manifest")
        assert isinstance(manifest, _ManifestRefs)
        for blob in (manifest.config, *manifest.layers):
            _copy_blob(store, files, blob, limit)
        ref = _ref_name(name if not out else None, top.annotations.get(REF_ANNOTATION), d.digest)
        out.append(store.add_image(ref, d.digest))
    if not out:
        raise ImageRefused("index.json lists no manifests")
    return out


class _ManifestRefs(msgspec.Struct):
    config: Descriptor
    layers: list[Descriptor]


def _hashed_copy(store: ImageStore, files: ArchiveFiles, member: str, limit: int) -> Descriptor:
    """Copy an archive file into the store under its own sha256 (a docker-save layer/config)."""
    h = hashlib.sha256()
    tmp = (
        store.root
        / "partial"
        / f"import-{os.getpid()}-{hashlib.sha256(member.encode()).hexdigest()[:16]}"
    )
    size = 0
    with files.open(member) as f, tmp.open("wb") as out:
        while chunk := f.read(1024 * 1024):
            size += len(chunk)
            if size > limit:
                out.close()
                tmp.unlink(missing_ok=True)
                raise ImageRefused(f"{member!r} is larger than sandbox.max_layer_mb")
            h.update(chunk)
            out.write(chunk)
    digest = "sha256:" + h.hexdigest()
    with store.blob_lock(digest):
        if store.has_blob(digest):
            tmp.unlink()
        else:
            os.replace(tmp, store.partial_path(digest))
            store.commit_partial(digest)
    return Descriptor(digest=digest, size=size)


def _import_docker_save(
    store: ImageStore, files: ArchiveFiles, name: str | None
) -> list[ImageRecord]:
    try:
        entries = msgspec.json.decode(files.read("manifest.json"), type=list[DockerSaveEntry])
    except msgspec.DecodeError as exc:
        raise ImageRefused(f"manifest.json of the archive is not docker save's: {exc}") from None
    if not entries:
        raise ImageRefused("manifest.json lists no images")
    out: list[ImageRecord] = []
    for entry in entries:
        config = _hashed_copy(store, files, entry.Config, MAX_DOCUMENT)
        layers = [
            _hashed_copy(store, files, layer, store.max_layer_bytes) for layer in entry.Layers
        ]
        manifest = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": config.digest,
                "size": config.size,
            },
            "layers": [
                {
                    "mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": d.digest,
                    "size": d.size,
                }
                for d in layers
            ],
        }
        data = msgspec.json.encode(manifest)
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        store.put_bytes(digest, data)
        tags = list(entry.RepoTags or [])
        first = name if name and not out else (tags[0] if tags else None)
        record = store.add_image(_ref_name(first, None, digest), digest)
        for tag in tags[1:]:
            store.add_image(str(parse_ref(tag)), digest)
        out.append(record)
    return out
