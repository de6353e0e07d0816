"""The OCI (and Docker v2) documents an image is made of, decoded strictly enough to trust.

An index lists manifests per platform; a manifest names the config blob and the layer blobs;
the config holds the image's runtime defaults (Env, WorkingDir, Entrypoint, Cmd, User). Every
digest in them is checked to be a sha256 content address before anything is fetched or read.
"""

from __future__ import annotations

import platform

import msgspec

from appliance.sandbox.images.errors import ImageRefused
from appliance.sandbox.images.reference import check_digest

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
INDEX_TYPES = (OCI_INDEX, DOCKER_LIST)
MANIFEST_TYPES = (OCI_MANIFEST, DOCKER_MANIFEST)
LAYER_SUFFIXES = ("tar", "tar+gzip", "tar.gzip", "rootfs.diff.tar.gzip", "tar+xz", "tar+bzip2")


class Platform(msgspec.Struct, kw_only=True):
    architecture: str = ""
    os: str = ""
    variant: str = ""


class Descriptor(msgspec.Struct, kw_only=True):
    mediaType: str = ""
    digest: str
    size: int
    platform: Platform | None = None
    annotations: dict[str, str] = msgspec.field(default_factory=dict)


class Index(msgspec.Struct, kw_only=True):
    schemaVersion: int = 2
    mediaType: str = ""
    manifests: list[Descriptor]


class Manifest(msgspec.Struct, kw_only=True):
    schemaVersion: int = 2
    mediaType: str = ""
    config: Descriptor
    layers: list[Descriptor]


class RuntimeConfig(msgspec.Struct, kw_only=True, rename={"env": "Env"}):
    env: list[str] | None = None
    Entrypoint: list[str] | None = None
    Cmd: list[str] | None = None
    WorkingDir: str = ""
    User: str = ""


class ImageConfig(msgspec.Struct, kw_only=True):
    architecture: str = ""
    os: str = ""
    config: RuntimeConfig = msgspec.field(default_factory=RuntimeConfig)


def host_platform() -> tuple[str, str]:
    """(os, architecture) in OCI's words for this host."""
    machine = platform.machine().lower()
    arch = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "i686": "386"}.get(
        machine, machine
    )
    return "linux", arch


def decode(data: bytes, kind: type[msgspec.Struct], what: str) -> msgspec.Struct:
    try:
        return msgspec.json.decode(data, type=kind)
    except msgspec.DecodeError as exc:
        raise ImageRefused(f"the {what} is not a valid OCI document: {exc}") from None


def media_type(data: bytes) -> str:
    """The mediaType a document says it is ("" when it does not say)."""
    try:
        head = msgspec.json.decode(data, type=dict[str, object])
    except msgspec.DecodeError as exc:
        raise ImageRefused(f"a manifest is not JSON: {exc}") from None
    value = head.get("mediaType", "")
    if not value and "manifests" in head:
        return OCI_INDEX
    return value if isinstance(value, str) else ""


def parse_manifest(data: bytes) -> Manifest:
    manifest = decode(data, Manifest, "manifest")
    assert isinstance(manifest, Manifest)
    check_digest(manifest.config.digest, "the config digest")
    if not manifest.layers:
        raise ImageRefused("the manifest lists no layers")
    for layer in manifest.layers:
        check_digest(layer.digest, "a layer digest")
        if layer.mediaType and not layer.mediaType.endswith(LAYER_SUFFIXES):
            raise ImageRefused(
                f"layer {layer.digest} has media type {layer.mediaType!r}, which is not a tar "
                "layer (zstd and foreign layers are not supported)"
            )
    return manifest


def pick_platform(index_data: bytes) -> Descriptor:
    """The index's manifest for this host's platform (or its only manifest)."""
    index = decode(index_data, Index, "image index")
    assert isinstance(index, Index)
    want_os, want_arch = host_platform()
    candidates = [
        m
        for m in index.manifests
        if m.platform is None or (m.platform.os == want_os and m.platform.architecture == want_arch)
    ]
    # attestation manifests (buildkit's "unknown/unknown") carry no platform we can run
    candidates = [m for m in candidates if m.annotations.get("vnd.docker.reference.type") is None]
    if not candidates:
        have = ", ".join(
            f"{m.platform.os}/{m.platform.architecture}" for m in index.manifests if m.platform
        )
        raise ImageRefused(
            f"the image has no {want_os}/{want_arch} variant (it has {have or 'none'}); pick "
            "an image built for this machine"
        )
    return candidates[0]


def parse_config(data: bytes) -> ImageConfig:
    config = decode(data, ImageConfig, "image config")
    assert isinstance(config, ImageConfig)
    return config
