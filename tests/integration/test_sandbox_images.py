"""Sandboxes in OCI images over HTTP: import, run a command or a language in the image's root,
the host's userland absent, whiteouts, Env and WorkingDir, limits and isolation, stateful
sandboxes, removal. The test image is a static busybox built by tests/fixtures/oci_images.py.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import require
from tests.fixtures.oci_images import (
    Entry,
    busybox_layout,
    docker_save_archive,
    have_busybox,
    layer_tar,
    tar_directory,
)
from tests.integration.conftest import SandboxServer, sandbox_server_with

REF = "localhost/busybox-test:1"
ASH_PROFILE = f"""
title = "BusyBox ash, from an image"
file = "main.sh"
run = ["{{ash}}", "{{file}}"]
image = "{REF}"

[tools.ash]
find = ["ash", "sh"]
"""


@pytest.fixture(scope="module")
def image_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SandboxServer]:
    require(have_busybox(), "a static /bin/busybox is needed (apt install busybox-static)")
    root = tmp_path_factory.mktemp("image-server")
    profiles = root / "profiles"
    profiles.mkdir()
    (profiles / "ash.toml").write_text(ASH_PROFILE)
    with sandbox_server_with(
        root, pool={}, max_concurrent=4, profile_dirs=[str(profiles)]
    ) as server:
        layout = tar_directory(busybox_layout(root / "layout"), root / "layout.tar")
        with server.client() as c:
            r = c.post(
                "/api/images/import",
                params={"name": REF},
                content=layout.read_bytes(),
                headers={"Content-Type": "application/octet-stream"},
            )
            assert r.status_code == 201, r.text
        yield server


def _run(c: httpx.Client, **body: Any) -> dict[str, Any]:
    r = c.post("/api/run", json=body)
    assert r.status_code == 200, r.text
    out: dict[str, Any] = r.json()
    return out


def test_command_sees_the_image_and_not_the_host(image_server: SandboxServer) -> None:
    script = (
        "cat /etc/hello.txt; cat /etc/added.txt; test -e /etc/gone.txt && echo GONE-PRESENT; "
        "test -e /usr/bin/python3 && echo HOST-PYTHON; test -e /usr && echo HOST-USR; "
        "echo env=$GREETING; pwd; id -u; touch /bin/new 2>/dev/null && echo ROOT-WRITABLE; "
        "echo kept > /workspace/out.txt; echo tmp > /tmp/t && cat /tmp/t"
    )
    with image_server.client() as c:
        r = _run(c, image=REF, command=["sh", "-c", script], fetch_files=["out.txt"])
    assert r["status"] == "ok", r
    out = r["stdout"]
    assert "hello from the image\nadded by layer two\n" in out
    for absent in ("GONE-PRESENT", "HOST-PYTHON", "HOST-USR", "ROOT-WRITABLE"):
        assert absent not in out, out
    assert "env=hello-from-image\n/app\n1000\ntmp\n" in out  # Env, WorkingDir, not root
    assert r["files"]["out.txt"] == "a2VwdAo="  # base64 of "kept\n"


def test_language_code_runs_with_the_image_interpreter(image_server: SandboxServer) -> None:
    with image_server.client() as c:
        r = _run(c, image=REF, language="sh", code="echo from-sh; pwd; ls /workspace")
        assert r["status"] == "ok", r
        assert r["stdout"] == "from-sh\n/workspace\nmain.sh\n"
        missing = c.post("/api/run", json={"image": REF, "language": "python", "code": "1"})
        assert missing.status_code == 424, missing.text
        assert "does not have" in missing.json()["error"]["message"]


def test_limits_and_isolation_hold_in_an_image(image_server: SandboxServer) -> None:
    with image_server.client() as c:
        slow = _run(c, image=REF, command=["sleep", "10"], timeout_s=1)
        assert slow["status"] == "timeout", slow
        net = _run(c, image=REF, command=["cat", "/proc/net/dev"])
        interfaces = [ln.split(":")[0].strip() for ln in net["stdout"].splitlines()[2:]]
        assert interfaces == ["lo"], net["stdout"]
        big = _run(
            c, image=REF, command=["dd", "if=/dev/zero", "of=/workspace/big", "bs=1M", "count=4000"]
        )
        assert big["status"] != "ok", big


def test_stateful_sandbox_in_an_image_keeps_its_files(image_server: SandboxServer) -> None:
    with image_server.client() as c:
        r = c.post("/api/sandboxes", json={"image": REF, "language": "sh"})
        assert r.status_code == 201, r.text
        sid, info = r.json()["id"], r.json()
        assert info["image"] == REF
        try:
            one = c.post(f"/api/sandboxes/{sid}/exec", json={"code": "echo 41 > state"})
            assert one.json()["status"] == "ok", one.text
            two = c.post(
                f"/api/sandboxes/{sid}/exec", json={"code": "cat state; cat /etc/hello.txt"}
            )
            assert two.json()["stdout"] == "41\nhello from the image\n", two.text
            busy = c.delete(f"/api/images/{REF}")  # its only name, while a sandbox runs in it
            assert busy.status_code == 409 and "delete them first" in busy.text, busy.text
        finally:
            c.delete(f"/api/sandboxes/{sid}")


def test_requests_that_cannot_run_are_refused_clearly(image_server: SandboxServer) -> None:
    with image_server.client() as c:
        r = c.post("/api/run", json={"image": "localhost/nope:1", "command": ["sh"]})
        assert r.status_code == 404 and "appliance images pull" in r.text, r.text
        r = c.post("/api/run", json={"command": ["sh"]})
        assert r.status_code == 400 and "image" in r.text, r.text
        r = c.post("/api/run", json={"image": "Bad Ref", "command": ["sh"]})
        assert r.status_code == 400, r.text
        r = c.post(
            "/api/images/import",
            params={"name": "Bad Name"},
            content=b"x" * 1000,
            headers={"Content-Type": "application/octet-stream"},
        )
        assert r.status_code == 400 and "image reference" in r.text, r.text
        r = c.post(
            "/api/images/import",
            content=b"not an archive",
            headers={"Content-Type": "application/octet-stream"},
        )
        assert r.status_code == 400 and "the uploaded archive is not" in r.text, r.text


def test_import_docker_save_list_inspect_and_remove(
    image_server: SandboxServer, tmp_path: Path
) -> None:
    archive = docker_save_archive(tmp_path / "saved.tar", "saved/busybox:2")
    with image_server.client() as c:
        r = c.post(
            "/api/images/import",
            content=archive.read_bytes(),
            headers={"Content-Type": "application/octet-stream"},
        )
        assert r.status_code == 201, r.text
        ref = r.json()["images"][0]["refs"][0]
        assert ref == "docker.io/saved/busybox:2"
        listed = {x for i in c.get("/api/images").json() for x in i["refs"]}
        assert {ref, REF} <= listed
        inspected = c.get(f"/api/images/{ref}").json()
        assert inspected["workdir"] == "/app" and inspected["layers"] == 2
        ran = _run(c, image="saved/busybox:2", command=["cat", "/etc/added.txt"])
        assert ran["stdout"] == "added by layer two\n"
        blobs = image_server.root / "oci" / "blobs" / "sha256"
        before = len(list(blobs.iterdir()))
        assert c.delete(f"/api/images/{ref}").json() == [ref]
        assert len(list(blobs.iterdir())) < before  # its own layers were freed
        assert c.get(f"/api/images/{ref}").status_code == 404
        assert (
            _run(c, image=REF, command=["echo", "ok"])["stdout"] == "ok\n"
        )  # the other image stays


def test_hostile_archive_is_refused_and_writes_nothing_outside(
    image_server: SandboxServer, tmp_path: Path
) -> None:
    layout = busybox_layout(tmp_path / "evil")
    # swap the top layer for one that climbs out; its digest is right, its content hostile
    evil = layer_tar([Entry("../../../../escaped.txt", data=b"x")], compress=True)
    import gzip
    import hashlib

    index = json.loads((layout / "index.json").read_text())
    mdigest = index["manifests"][0]["digest"][7:]
    manifest = json.loads((layout / "blobs" / "sha256" / mdigest).read_text())
    digest = "sha256:" + hashlib.sha256(evil).hexdigest()
    (layout / "blobs" / "sha256" / digest[7:]).write_bytes(evil)
    manifest["layers"][1] = {
        "mediaType": manifest["layers"][1]["mediaType"],
        "digest": digest,
        "size": len(evil),
    }
    mdata = json.dumps(manifest).encode()
    mnew = hashlib.sha256(mdata).hexdigest()
    (layout / "blobs" / "sha256" / mnew).write_bytes(mdata)
    index["manifests"][0].update(digest="sha256:" + mnew, size=len(mdata))
    (layout / "index.json").write_text(json.dumps(index))
    assert gzip.decompress(evil)
    with image_server.client() as c:
        r = c.post(
            "/api/images/import",
            params={"name": "localhost/evil:1"},
            content=tar_directory(layout, tmp_path / "evil.tar").read_bytes(),
            headers={"Content-Type": "application/octet-stream"},
        )
        assert r.status_code == 400 and "'..'" in r.text, r.text
        assert c.get("/api/images/localhost/evil:1").status_code == 404
    assert not list(image_server.root.rglob("escaped.txt"))
    assert not list(Path("/").glob("escaped.txt"))


def test_a_language_profile_can_live_in_an_image(image_server: SandboxServer) -> None:
    with image_server.client() as c:
        langs = {x["name"]: x for x in c.get("/api/sandboxes/languages").json()}
        assert langs["ash"]["available"], langs["ash"]
        assert f"in image {REF}" in langs["ash"]["detail"]
        r = _run(c, language="ash", code="cat /etc/hello.txt; test -e /usr && echo HOST")
        assert r["stdout"] == "hello from the image\n", r


async def test_an_agents_run_code_runs_in_its_sandbox_image(tmp_path: Path) -> None:
    from appliance.config import SandboxConfig
    from appliance.sandbox.profiles import ProfileCatalog
    from appliance.sandbox.service import SandboxService
    from appliance.sessions.tools import RunCode, ToolContext
    from tests.integration.conftest import SANDBOX_REPO
    from tests.integration.test_sandbox_bounds import _Store

    require(have_busybox(), "a static /bin/busybox is needed (apt install busybox-static)")
    catalog = ProfileCatalog.load([SANDBOX_REPO / "profiles" / "sandboxes"])
    service = SandboxService(SandboxConfig(pool={}), catalog=catalog, root=tmp_path / "sandboxes")
    await service.start()
    try:
        require(not service.unavailable, f"this host cannot run sandboxes: {service.unavailable}")
        await service.images.import_file(busybox_layout(tmp_path / "layout"), REF)
        tool = RunCode(service, _Store())  # type: ignore[arg-type]
        ctx = ToolContext("session-1", "sh", sandbox_image=REF)
        first = await tool.run(ctx, {"code": "echo 7 > n; cat /etc/added.txt"})
        assert first.status == "ok" and first.content == "added by layer two", first
        second = await tool.run(ctx, {"code": "cat n; test -e /usr/bin/python3 || echo no-py"})
        assert second.content == "7\nno-py", second
    finally:
        await service.stop()


def test_escape_battery_holds_in_an_image(image_server: SandboxServer) -> None:
    """The host battery's checks that busybox can make: the seccomp filter, no mount, no
    network, memory limits, nothing of the daemon's environment, no host process."""
    checks = {
        "busybox unshare -U -r id || echo refused": "refused",
        "busybox mount -t tmpfs t /tmp 2>/dev/null || echo refused": "refused",
        "busybox dd if=/dev/zero of=/dev/null bs=300M count=1 2>/dev/null || echo refused": (
            "refused"
        ),
        "cat /proc/net/dev | grep -c : ": "1",  # the loopback device only
        "ls /proc | grep -cE '^[0-9]+$' | busybox awk '{print ($1 < 6)}'": "1",
        "env | grep -c -e APPLIANCE -e PYTEST -e VIRTUAL_ENV": "0",
        "test -e /root -o -e /home -o -e /work -o -e /usr && echo HOST || echo none": "none",
        "touch /opt/appliance/x /x 2>/dev/null || echo read-only": "read-only",
    }
    with image_server.client() as c:
        for script, expected in checks.items():
            r = _run(c, image=REF, command=["sh", "-c", script], memory_mb=64, timeout_s=10)
            assert r["stdout"].strip().splitlines()[-1:] == [expected], (script, r)


def test_an_image_built_by_umoci_runs_with_its_whiteout(
    image_server: SandboxServer, tmp_path: Path
) -> None:
    import shutil

    from tests.fixtures.oci_images import umoci_layout

    require(shutil.which("umoci"), "umoci is needed (apt install umoci)")
    layout = tar_directory(umoci_layout(tmp_path), tmp_path / "umoci.tar")
    with image_server.client() as c:
        r = c.post(
            "/api/images/import",
            content=layout.read_bytes(),
            headers={"Content-Type": "application/octet-stream"},
        )
        assert r.status_code == 201, r.text
        ref = r.json()["images"][0]["refs"][0]
        ran = _run(c, image=ref, command=["sh", "-c", "pwd; ls /etc; echo $GREETING"])
    assert ran["stdout"].splitlines()[0] == "/etc"
    assert "a" in ran["stdout"].split() and "b" not in ran["stdout"].split(), ran
    assert ran["stdout"].endswith("umoci\n"), ran
