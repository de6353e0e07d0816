"""The image store on its own: imports, shared layers counted by the images that use them,
removal and prune, and what `appliance doctor` reports of a damaged store."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from appliance.sandbox.images.archive import import_archive
from appliance.sandbox.images.errors import ImageNotFound, ImageRefused
from appliance.sandbox.images.store import ImageStore, inspect_store
from tests.conftest import require
from tests.fixtures.oci_images import busybox_layout, docker_save_archive, have_busybox


@pytest.fixture
def store(tmp_path: Path) -> ImageStore:
    require(have_busybox(), "a static /bin/busybox is needed (apt install busybox-static)")
    return ImageStore(tmp_path / "oci", max_layer_bytes=64 * 1024 * 1024)


def test_shared_layers_stay_until_the_last_image_using_them_goes(
    store: ImageStore, tmp_path: Path
) -> None:
    layout = busybox_layout(tmp_path / "layout")
    a = import_archive(store, layout, "localhost/a:1")[0]
    b = import_archive(store, layout, "localhost/b:1")[0]
    assert a.digest == b.digest  # one image, two names
    layers = sorted((store.root / "layers").iterdir())
    assert len(layers) == 2
    assert store.remove("localhost/a:1") == ["localhost/a:1"]
    assert sorted((store.root / "layers").iterdir()) == layers  # b still uses them
    assert store.resolve("localhost/b:1").digest == b.digest
    store.remove(b.digest)
    assert list((store.root / "layers").iterdir()) == []
    assert list((store.root / "roots").iterdir()) == []
    assert list((store.root / "blobs" / "sha256").iterdir()) == []
    with pytest.raises(ImageNotFound, match="appliance images pull"):
        store.resolve("localhost/b:1")


def test_docker_save_names_come_from_repo_tags(store: ImageStore, tmp_path: Path) -> None:
    rec = import_archive(store, docker_save_archive(tmp_path / "s.tar", "team/tool:7"))[0]
    assert store.resolve("team/tool:7").digest == rec.digest
    assert store.resolve("docker.io/team/tool:7").digest == rec.digest
    assert store.resolve(rec.digest[:15]).digest == rec.digest  # a digest prefix


def test_a_blob_that_does_not_match_its_digest_is_refused(
    store: ImageStore, tmp_path: Path
) -> None:
    layout = busybox_layout(tmp_path / "layout")
    blobs = sorted((layout / "blobs" / "sha256").iterdir(), key=lambda p: p.stat().st_size)
    biggest = blobs[-1]  # the busybox layer
    data = bytearray(biggest.read_bytes())
    data[100] ^= 1
    biggest.write_bytes(bytes(data))
    with pytest.raises(ImageRefused, match="digest"):
        import_archive(store, layout, "localhost/bad:1")
    assert list((store.root / "blobs" / "sha256").glob(biggest.name)) == []


def test_not_an_image_archive(store: ImageStore, tmp_path: Path) -> None:
    junk = tmp_path / "junk.tar"
    junk.write_bytes(b"not a tar at all" * 100)
    with pytest.raises(ImageRefused, match="docker save"):
        import_archive(store, junk)


def test_doctor_report_names_an_image_with_a_missing_layer(
    store: ImageStore, tmp_path: Path
) -> None:
    rec = import_archive(store, busybox_layout(tmp_path / "layout"), "localhost/x:1")[0]
    healthy = inspect_store(store.root)
    assert (healthy.images, healthy.problems) == (1, [])
    assert healthy.bytes > 500_000
    shutil.rmtree(store.root / "layers" / rec.layers[0].split(":")[1])
    damaged = inspect_store(store.root)
    assert damaged.problems and "localhost/x:1" in damaged.problems[0]


def test_prune_keeps_what_a_pull_or_upload_is_writing(store: ImageStore) -> None:
    digest = "sha256:" + "ab" * 32
    fetched = store.blob_path(digest)
    fetched.write_bytes(b"a blob a pull just fetched")
    store.partial_path("sha256:" + "cd" * 32).write_bytes(b"interrupted")
    upload = store.root / "partial" / "upload-1234.tar"
    upload.write_bytes(b"an upload on its way")
    with store.pinned([digest]):
        store.collect()
        store.prune_partial()
        assert fetched.exists()  # no image names it yet, but a pull holds it
    assert upload.exists()  # younger than an hour: still being written
    assert not store.partial_path("sha256:" + "cd" * 32).exists()
    store.collect()
    assert not fetched.exists()


def test_an_index_resolves_to_this_machines_platform(store: ImageStore, tmp_path: Path) -> None:
    """A layout whose index points at an image index of two platforms (the other one first)."""
    import hashlib
    import json

    from appliance.sandbox.images.manifest import host_platform

    layout = busybox_layout(tmp_path / "layout")
    blobs = layout / "blobs" / "sha256"
    index = json.loads((layout / "index.json").read_text())
    ours = dict(index["manifests"][0])
    other = {**ours, "platform": {"os": "linux", "architecture": "s390x"}}
    other["digest"] = "sha256:" + "0" * 64  # never read: not this platform
    os_, arch = host_platform()
    ours["platform"] = {"os": os_, "architecture": arch}
    nested = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [other, ours],
        }
    ).encode()
    digest = hashlib.sha256(nested).hexdigest()
    (blobs / digest).write_bytes(nested)
    index["manifests"] = [
        {
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "digest": f"sha256:{digest}",
            "size": len(nested),
        }
    ]
    (layout / "index.json").write_text(json.dumps(index))
    rec = import_archive(store, layout, "localhost/multi:1")[0]
    assert rec.digest == ours["digest"]
    s390x_only = json.dumps({"schemaVersion": 2, "manifests": [other]}).encode()
    (blobs / hashlib.sha256(s390x_only).hexdigest()).write_bytes(s390x_only)
    index["manifests"][0].update(
        digest="sha256:" + hashlib.sha256(s390x_only).hexdigest(), size=len(s390x_only)
    )
    (layout / "index.json").write_text(json.dumps(index))
    with pytest.raises(ImageRefused, match="s390x"):
        import_archive(store, layout, "localhost/foreign:1")


def test_docker_hub_credentials_under_dockers_own_key(tmp_path: Path) -> None:
    import base64
    import json

    from appliance.sandbox.images.registry import load_credentials

    auth = tmp_path / "auth.json"
    token = base64.b64encode(b"me:secret").decode()
    auth.write_text(
        json.dumps(
            {
                "auths": {
                    "https://index.docker.io/v1/": {"auth": token},
                    "127.0.0.1:5000": {"auth": token},
                }
            }
        )
    )
    creds = load_credentials(str(auth))
    assert creds == {"docker.io": ("me", "secret"), "127.0.0.1:5000": ("me", "secret")}
