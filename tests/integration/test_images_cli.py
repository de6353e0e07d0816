"""`appliance images` against a real daemon: import a layout and a docker-save archive, pull from
a loopback registry with `image.pull` events on /api/events, run in the image through the CLI's
client path, inspect, rm, prune. Every command is the real `python -m appliance` process.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import require
from tests.fixtures.oci_images import busybox_layout, docker_save_archive, have_busybox
from tests.integration.daemon import REPO, Daemon, running_daemon
from tests.integration.ops_client import event_stream
from tests.integration.registry import LocalRegistry, have_registry_tools


def cli(d: Daemon, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "appliance", "images", *args, "--url", d.url],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRegistry]:
    require(have_busybox(), "a static /bin/busybox is needed (apt install busybox-static)")
    require(have_registry_tools(), "docker-registry and skopeo are needed (apt install them)")
    root = tmp_path_factory.mktemp("cli-registry")
    with LocalRegistry.start(root / "reg") as reg:
        reg.push(busybox_layout(root / "layout"), "cli/busybox:1")
        yield reg


def test_images_cli_end_to_end(registry: LocalRegistry, tmp_path: Path) -> None:
    config = {"sandbox": {"pool": {}, "insecure_registries": [registry.host]}}
    with running_daemon(tmp_path / "d", config=config) as d:
        layout = busybox_layout(tmp_path / "layout")
        out = cli(d, "import", str(layout), "--name", "localhost/from-dir:1")
        assert out.returncode == 0, out.stderr
        assert "imported localhost/from-dir:1" in out.stdout
        saved = cli(d, "import", str(docker_save_archive(tmp_path / "s.tar", "saved/bb:3")))
        assert saved.returncode == 0 and "docker.io/saved/bb:3" in saved.stdout, saved.stderr

        ref = f"{registry.host}/cli/busybox:1"
        with event_stream(d.url, params={"types": "image."}) as stream:
            pulled = cli(d, "pull", ref)
            assert pulled.returncode == 0, pulled.stderr
            got = stream.until(lambda e: e.get("status") == "done")
        assert [e["type"] for e in got] == ["image.pull"] * len(got)
        assert got[0]["status"] == "pulling" and got[-1]["digest"].startswith("sha256:")

        listing = cli(d, "list")
        for name in (ref, "localhost/from-dir:1", "docker.io/saved/bb:3"):
            assert name in listing.stdout, listing.stdout
        info = json.loads(cli(d, "inspect", ref).stdout)
        assert info["env"] == ["PATH=/bin", "GREETING=hello-from-image"]

        with d.http() as c:
            r = c.post("/api/run", json={"image": ref, "command": ["sh", "-c", "echo $GREETING"]})
            assert r.json()["stdout"] == "hello-from-image\n", r.text

        program = tmp_path / "main.sh"
        program.write_text("cat /etc/added.txt\n")
        ran = subprocess.run(
            [
                sys.executable,
                "-m",
                "appliance",
                "run",
                "--image",
                ref,
                "sh",
                str(program),
                "--url",
                d.url,
            ],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=REPO,
        )
        assert (ran.returncode, ran.stdout) == (0, "added by layer two\n"), ran.stderr
        argv = subprocess.run(
            [
                sys.executable,
                "-m",
                "appliance",
                "run",
                "--image",
                ref,
                "--command",
                "--url",
                d.url,
                "--",
                "sh",
                "-c",
                "pwd; exit 3",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=REPO,
        )
        assert (argv.returncode, argv.stdout) == (3, "/app\n"), argv.stderr

        missing = cli(d, "pull", f"{registry.host}/cli/none:1")
        assert missing.returncode != 0 and "not in the registry" in missing.stderr

        assert "removed docker.io/saved/bb:3" in cli(d, "rm", "saved/bb:3").stdout
        gone = cli(d, "inspect", "saved/bb:3")
        assert gone.returncode != 0 and "appliance images pull" in gone.stderr
        assert cli(d, "prune").returncode == 0
