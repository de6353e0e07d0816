"""Pulling images from a real registry on a loopback port (Debian's docker-registry), pushed there
with skopeo: anonymous and with bearer-token auth, an interrupted pull resumed with Range, a
corrupted blob refused, plain HTTP only for registries the config lists.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import require
from tests.fixtures.oci_images import busybox_layout, have_busybox
from tests.integration.conftest import SandboxServer, sandbox_server_with
from tests.integration.registry import CuttingProxy, LocalRegistry, have_registry_tools


@pytest.fixture(scope="module")
def layout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    require(have_busybox(), "a static /bin/busybox is needed (apt install busybox-static)")
    require(
        have_registry_tools(),
        "docker-registry, skopeo and openssl are needed (apt install docker-registry skopeo)",
    )
    return busybox_layout(tmp_path_factory.mktemp("layout") / "bb")


def _pull(c: httpx.Client, ref: str, timeout: float = 30.0) -> dict[str, Any]:
    r = c.post("/api/images/pull", json={"ref": ref})
    assert r.status_code == 202, r.text
    canonical = r.json()["ref"]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for p in c.get("/api/images/pulls").json():
            if p["ref"] == canonical and p["status"] != "pulling":
                out: dict[str, Any] = p
                return out
        time.sleep(0.05)
    raise AssertionError(f"the pull of {ref} did not end within {timeout}s")


@pytest.fixture(scope="module")
def registry(layout: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRegistry]:
    with LocalRegistry.start(tmp_path_factory.mktemp("registry")) as reg:
        reg.push(layout, "tools/busybox:1")
        yield reg


@pytest.fixture
def server(registry: LocalRegistry, tmp_path: Path) -> Iterator[SandboxServer]:
    with sandbox_server_with(tmp_path, pool={}, insecure_registries=[registry.host]) as s:
        yield s


def test_pull_then_run_and_pull_again_is_a_no_op(
    registry: LocalRegistry, server: SandboxServer
) -> None:
    ref = f"{registry.host}/tools/busybox:1"
    with server.client() as c:
        t0 = time.monotonic()
        done = _pull(c, ref)
        pull_s = time.monotonic() - t0
        assert done["status"] == "done", done
        assert done["bytes_done"] == done["bytes_total"] > 500_000
        r = c.post("/api/run", json={"image": ref, "command": ["cat", "/etc/added.txt"]})
        assert r.json()["stdout"] == "added by layer two\n", r.text
        gone = c.post("/api/run", json={"image": ref, "command": ["cat", "/etc/gone.txt"]})
        assert gone.json()["status"] == "error"  # the whiteout removed it
        again = _pull(c, ref)
        assert again["status"] == "done" and again["digest"] == done["digest"]
    print(f"pull of the busybox image from a loopback registry: {pull_s * 1000:.0f} ms")


def test_plain_http_only_for_listed_registries(registry: LocalRegistry, tmp_path: Path) -> None:
    with sandbox_server_with(tmp_path, pool={}) as s, s.client() as c:
        failed = _pull(c, f"{registry.host}/tools/busybox:1")
    assert failed["status"] == "failed"
    assert "insecure_registries" in failed["error"], failed


def test_missing_image_says_so(registry: LocalRegistry, server: SandboxServer) -> None:
    with server.client() as c:
        failed = _pull(c, f"{registry.host}/tools/nothing:9")
    assert failed["status"] == "failed" and "not in the registry" in failed["error"], failed


def test_interrupted_pull_resumes_with_range(
    registry: LocalRegistry, layout: Path, tmp_path: Path
) -> None:
    proxy = CuttingProxy(registry.host)
    try:
        with sandbox_server_with(tmp_path, pool={}, insecure_registries=[proxy.host]) as s:
            ref = f"{proxy.host}/tools/busybox:1"
            with s.client() as c:
                proxy.cut_next_blob = True
                first = _pull(c, ref)
                assert first["status"] == "failed" and "resume" in first["error"], first
                partial = list((tmp_path / "oci" / "partial").iterdir())
                assert partial and partial[0].stat().st_size > 0
                second = _pull(c, ref)
                assert second["status"] == "done", second
            assert any(r and r.startswith("bytes=") and r != "bytes=0-" for r in proxy.ranges)
            assert not list((tmp_path / "oci" / "partial").iterdir())
    finally:
        proxy.stop()


def test_corrupted_blob_is_refused(layout: Path, tmp_path: Path) -> None:
    with LocalRegistry.start(tmp_path / "reg") as reg:
        reg.push(layout, "tools/corrupt:1")
        manifest = httpx.get(
            f"http://{reg.host}/v2/tools/corrupt/manifests/1",
            headers={"Accept": "application/vnd.oci.image.manifest.v1+json"},
        ).json()
        blob = reg.blob_file(manifest["layers"][0]["digest"])
        data = bytearray(blob.read_bytes())
        data[len(data) // 2] ^= 0xFF
        blob.write_bytes(bytes(data))
        with sandbox_server_with(tmp_path / "d", pool={}, insecure_registries=[reg.host]) as s:
            with s.client() as c:
                failed = _pull(c, f"{reg.host}/tools/corrupt:1")
                assert failed["status"] == "failed", failed
                assert "digest" in failed["error"], failed
                assert c.get("/api/images").json() == []
            assert not list((tmp_path / "d" / "oci" / "layers").iterdir())


def test_token_auth_challenge_is_followed(layout: Path, tmp_path: Path) -> None:
    with LocalRegistry.start(tmp_path / "reg", token_auth=True) as reg:
        reg.push(layout, "private/busybox:1")
        assert httpx.get(f"http://{reg.host}/v2/private/busybox/tags/list").status_code == 401
        settings = {"pool": {}, "insecure_registries": [reg.host]}
        with sandbox_server_with(tmp_path / "d", **settings) as s, s.client() as c:
            done = _pull(c, f"{reg.host}/private/busybox:1")
            assert done["status"] == "done", done
        assert reg.tokens is not None
        assert "repository:private/busybox:pull" in reg.tokens.issued
