"""Image references and digests.

A reference is `[registry/]name[:tag][@sha256:hex]`, as Docker spells it: a first component with
a dot, a colon or `localhost` is a registry, else the image is on Docker Hub (`docker.io`, whose
one-word names live under `library/`). The store keys images by the reference's canonical
spelling, so `busybox`, `docker.io/library/busybox:latest` are one image.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from appliance.sandbox.images.errors import ImageRefused

DEFAULT_REGISTRY = "docker.io"
_NAME = re.compile(
    r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*$"
)
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
_REGISTRY = re.compile(r"^[A-Za-z0-9.-]+(?::[0-9]{1,5})?$|^\[[0-9a-fA-F:]+\](?::[0-9]{1,5})?$")


def check_digest(digest: str, what: str = "digest") -> str:
    """`digest` if it is `sha256:` and 64 lowercase hex digits; refused otherwise."""
    if not isinstance(digest, str) or not _DIGEST.match(digest):
        raise ImageRefused(
            f"{what} {digest!r} is not a sha256 digest (sha256: and 64 hex digits); only sha256 "
            "content addresses are accepted"
        )
    return digest


@dataclass(frozen=True)
class ImageRef:
    registry: str
    name: str
    tag: str | None = None
    digest: str | None = None

    @property
    def reference(self) -> str:
        """What a registry's manifest URL takes: the digest if pinned, else the tag."""
        return self.digest or self.tag or "latest"

    def __str__(self) -> str:
        out = f"{self.registry}/{self.name}"
        if self.tag:
            out += f":{self.tag}"
        if self.digest:
            out += f"@{self.digest}"
        return out


def parse_ref(text: str) -> ImageRef:
    """Parse an image reference, or raise ImageRefused saying what a good one looks like."""
    raw = text.strip()
    hint = "; write it as [registry/]name[:tag][@sha256:...], for example 127.0.0.1:5000/tools:1"
    if not raw or len(raw) > 512 or any(c.isspace() or ord(c) < 32 for c in raw):
        raise ImageRefused(f"{text!r} is not an image reference{hint}", param="ref")
    digest = None
    if "@" in raw:
        raw, digest = raw.split("@", 1)
        check_digest(digest, "the reference's digest")
    registry = DEFAULT_REGISTRY
    first, sep, rest = raw.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost"):
        if not _REGISTRY.match(first):
            raise ImageRefused(f"{first!r} is not a registry host[:port]{hint}", param="ref")
        registry, raw = first, rest
    tag = None
    last_slash = raw.rfind("/")
    if ":" in raw[last_slash + 1 :]:
        raw, tag = raw.rsplit(":", 1)
        if not _TAG.match(tag):
            raise ImageRefused(f"{tag!r} is not a valid tag{hint}", param="ref")
    if not _NAME.match(raw):
        raise ImageRefused(f"{raw!r} is not a valid image name (lowercase){hint}", param="ref")
    if registry == DEFAULT_REGISTRY and "/" not in raw:
        raw = f"library/{raw}"
    if tag is None and digest is None:
        tag = "latest"
    return ImageRef(registry, raw, tag, digest)
