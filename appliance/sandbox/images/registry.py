"""Pulling images with the OCI distribution API (what Docker Hub, GHCR and CNCF Distribution speak).

    GET /v2/<name>/manifests/<tag|digest>   (Accept: OCI index/manifest, Docker v2 list/manifest)
    GET /v2/<name>/blobs/<digest>           (Range: bytes=N- to resume a partial download)

Auth: a 401's `WWW-Authenticate: Bearer realm=...,service=...,scope=...` is answered by asking
the realm for a token (anonymously, or with the registry's credentials from an auth.json), and
the request is retried with it; a `Basic` challenge is answered with the credentials. Every
document and blob is verified against its sha256 digest before the store keeps it; a pinned
reference's manifest must hash to the pinned digest. An index resolves to this host's platform.
HTTPS always, plain HTTP only for the registries `sandbox.insecure_registries` lists.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
from collections.abc import Callable
from pathlib import Path

import httpx

from appliance.sandbox.images.errors import DigestMismatch, ImageRefused, RegistryError
from appliance.sandbox.images.manifest import (
    DOCKER_LIST,
    DOCKER_MANIFEST,
    INDEX_TYPES,
    OCI_INDEX,
    OCI_MANIFEST,
    media_type,
    parse_manifest,
    pick_platform,
)
from appliance.sandbox.images.reference import ImageRef, check_digest, parse_ref
from appliance.sandbox.images.store import ImageStore

ACCEPT = ", ".join((OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST))
MAX_MANIFEST = 4 * 1024 * 1024
REGISTRY_HOSTS = {"docker.io": "registry-1.docker.io"}
DOCKER_HUB_KEYS = {"index.docker.io": "docker.io", "registry-1.docker.io": "docker.io"}
"""How `docker login` names Docker Hub in auth.json (https://index.docker.io/v1/)."""
Progress = Callable[[int, int], None]
_CHALLENGE = re.compile(r'(\w+)="([^"]*)"')


def load_credentials(configured: str = "") -> dict[str, tuple[str, str]]:
    """Registry -> (user, password) from the Docker/Podman auth.json convention."""
    candidates = [configured, os.environ.get("REGISTRY_AUTH_FILE", "")]
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime:
        candidates.append(f"{runtime}/containers/auth.json")
    candidates += [
        str(Path.home() / ".config/containers/auth.json"),
        str(Path.home() / ".docker/config.json"),
    ]
    for path in candidates:
        if path and os.path.isfile(path):
            try:
                auths = json.loads(Path(path).read_text()).get("auths", {})
            except (OSError, ValueError, AttributeError):
                continue
            out: dict[str, tuple[str, str]] = {}
            for host, entry in auths.items():
                try:
                    user, _, password = base64.b64decode(entry["auth"]).decode().partition(":")
                except (KeyError, ValueError, TypeError):
                    continue
                key = host.removeprefix("https://").removeprefix("http://").split("/")[0]
                out[DOCKER_HUB_KEYS.get(key, key)] = (user, password)
            return out
    return {}


class RegistryClient:
    def __init__(
        self,
        *,
        insecure: list[str],
        credentials: dict[str, tuple[str, str]],
        max_blob_bytes: int,
        timeout: float = 60.0,
    ) -> None:
        self.insecure = set(insecure)
        self.credentials = credentials
        self.max_blob_bytes = max_blob_bytes
        # the environment's proxy settings hold, as for model downloads
        self.http = httpx.Client(timeout=timeout, follow_redirects=True)
        self._tokens: dict[str, str] = {}
        self.cancelled = False
        """Set from another thread to stop the pull at its next chunk."""

    def close(self) -> None:
        self.http.close()

    def _base(self, ref: ImageRef) -> str:
        host = REGISTRY_HOSTS.get(ref.registry, ref.registry)
        scheme = "http" if ref.registry in self.insecure else "https"
        return f"{scheme}://{host}/v2/{ref.name}"

    # --- auth --------------------------------------------------------------------------------------

    def _authorize(self, ref: ImageRef, challenge: str) -> None:
        scheme, _, params = challenge.partition(" ")
        fields = dict(_CHALLENGE.findall(params))
        creds = self.credentials.get(ref.registry)
        if scheme.lower() == "basic":
            if creds is None:
                raise RegistryError(
                    f"{ref.registry} needs credentials; log in (appliance images login, or an "
                    "auth.json as podman and docker write it)"
                )
            token = base64.b64encode(f"{creds[0]}:{creds[1]}".encode()).decode()
            self._tokens[ref.registry] = f"Basic {token}"
            return
        realm = fields.get("realm", "")
        if not realm.startswith("https://") and not (
            realm.startswith("http://") and ref.registry in self.insecure
        ):
            raise RegistryError(f"{ref.registry} names an unusable token realm {realm!r}")
        query = {k: v for k, v in fields.items() if k in ("service", "scope")}
        query.setdefault("scope", f"repository:{ref.name}:pull")
        try:
            r = self.http.get(realm, params=query, auth=creds)
        except httpx.HTTPError as exc:
            raise RegistryError(f"the token service {realm} is unreachable: {exc}") from exc
        if r.status_code != 200:
            raise RegistryError(
                f"the token service {realm} refused a pull token ({r.status_code}); check the "
                "credentials for this registry"
            )
        answer: object = None
        try:
            body = r.json()
            if isinstance(body, dict):
                answer = body.get("token") or body.get("access_token")
        except ValueError:
            pass
        if not isinstance(answer, str) or not answer:
            raise RegistryError(f"the token service {realm} answered without a token")
        self._tokens[ref.registry] = f"Bearer {answer}"

    def _get(self, ref: ImageRef, url: str, headers: dict[str, str]) -> httpx.Response:
        """GET that answers one auth challenge; the caller streams and closes the response."""
        for attempt in (0, 1):
            h = dict(headers)
            if ref.registry in self._tokens:
                h["Authorization"] = self._tokens[ref.registry]
            try:
                r = self.http.send(self.http.build_request("GET", url, headers=h), stream=True)
            except httpx.HTTPError as exc:
                raise RegistryError(
                    f"{ref.registry} is unreachable ({exc}); check the address, and for a "
                    "plain-HTTP registry that sandbox.insecure_registries lists it"
                ) from exc
            if r.status_code == 401 and attempt == 0:
                challenge = r.headers.get("WWW-Authenticate", "")
                r.close()
                self._authorize(ref, challenge)
                continue
            return r
        raise RegistryError(f"{ref.registry} refused the credentials (401)")

    # --- documents and blobs ------------------------------------------------------------------------

    def _document(self, ref: ImageRef, reference: str) -> tuple[bytes, str]:
        r = self._get(ref, f"{self._base(ref)}/manifests/{reference}", {"Accept": ACCEPT})
        try:
            if r.status_code == 404:
                raise RegistryError(f"{ref} is not in the registry (404); check the name and tag")
            if r.status_code != 200:
                raise RegistryError(f"{ref.registry} answered {r.status_code} for {ref}")
            data = b""
            for chunk in r.iter_bytes():
                data += chunk
                if len(data) > MAX_MANIFEST:
                    raise ImageRefused(f"the manifest of {ref} is larger than 4 MB")
        finally:
            r.close()
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        if reference.startswith("sha256:") and digest != reference:
            raise DigestMismatch(f"the registry sent a manifest {digest} for {reference}")
        return data, digest

    def _blob(
        self, store: ImageStore, ref: ImageRef, digest: str, size: int, tick: Progress
    ) -> None:
        with store.blob_lock(check_digest(digest)):
            self._fetch_blob(store, ref, digest, size, tick)

    def _fetch_blob(
        self, store: ImageStore, ref: ImageRef, digest: str, size: int, tick: Progress
    ) -> None:
        if store.has_blob(digest):
            tick(size, size)
            return
        if size > self.max_blob_bytes:
            raise ImageRefused(f"layer {digest} is {size} bytes, above sandbox.max_layer_mb")
        part = store.partial_path(digest)
        have = part.stat().st_size if part.exists() else 0
        if have > size:
            part.unlink()
            have = 0
        headers = {"Range": f"bytes={have}-"} if have else {}
        r = self._get(ref, f"{self._base(ref)}/blobs/{digest}", headers)
        try:
            if r.status_code == 206 and have:
                mode = "ab"
            elif r.status_code == 200:
                mode, have = "wb", 0
            else:
                raise RegistryError(f"{ref.registry} answered {r.status_code} for blob {digest}")
            with part.open(mode) as out:
                done = have
                tick(done, size)
                for chunk in r.iter_raw():  # as it arrives: an interruption keeps it all
                    done += len(chunk)
                    if done > size:
                        raise DigestMismatch(f"blob {digest} is longer than its descriptor says")
                    out.write(chunk)
                    tick(done, size)
        except httpx.HTTPError as exc:
            raise RegistryError(
                f"the download of {digest} broke off ({exc}); pull again to resume it"
            ) from exc
        finally:
            r.close()
        store.commit_partial(digest)

    def pull(self, store: ImageStore, text: str, progress: Progress | None = None) -> str:
        """Pull `text` into `store`; returns the manifest digest."""
        ref = parse_ref(text)
        data, digest = self._document(ref, ref.reference)
        if media_type(data) in INDEX_TYPES:
            store.put_bytes(digest, data)
            chosen = pick_platform(data)
            data, digest = self._document(ref, check_digest(chosen.digest))
        manifest = parse_manifest(data)
        blobs = [manifest.config, *manifest.layers]
        with store.pinned([digest, *(b.digest for b in blobs)]):
            store.put_bytes(digest, data)
            total = sum(b.size for b in blobs)
            finished = 0
            for blob in blobs:

                def tick(done: int, _size: int, base: int = finished) -> None:
                    if self.cancelled:
                        raise RegistryError(
                            "the pull was stopped (the daemon is stopping); pull again to resume"
                        )
                    if progress is not None:
                        progress(base + done, total)

                self._blob(store, ref, blob.digest, blob.size, tick)
                finished += blob.size
            store.add_image(str(ref), digest)
        return digest
