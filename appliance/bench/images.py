"""`appliance bench images`: what an OCI image costs: import, pull, and a run in it vs the host.

In one run, against a throwaway `appliance serve`:
(a) importing an image archive (--archive, or a one-layer image made here from a static
    /bin/busybox, Debian's busybox-static) through `POST /api/images/import`;
(b) when docker-registry and skopeo are installed: the same image pushed to a loopback registry
    started here and pulled through `POST /api/images/pull` (cold, then again: a no-op);
(c) p50 and p95 over --runs one-shot `POST /api/run`s of `sh` code printing one line: on the
    host's toolchain, in the image with language sh, and in the image as a `command`.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import hashlib
import io
import json
import shutil
import socket
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from appliance.bench.harness import bench_daemon, pct
from appliance.errors import ApplianceError

REF = "localhost/bench-busybox:1"


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("images", help="image import, pull, and runs in an image vs the host")
    p.add_argument("--runs", type=int, default=40, help="runs per measurement (default 40)")
    p.add_argument("--archive", type=Path, help="an OCI layout tar or docker-save archive")
    p.set_defaults(func=run)


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def busybox_layout(dest: Path) -> Path:
    """A one-layer OCI layout holding /bin/busybox and an sh link."""
    busybox = Path("/bin/busybox")
    if not busybox.is_file() or b"ld-linux" in busybox.read_bytes()[:4096]:
        raise ApplianceError("no static /bin/busybox: apt install busybox-static, or --archive")
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        tar.add(busybox, arcname="bin/busybox")
        for applet in ("sh", "echo", "cat"):
            link = tarfile.TarInfo(f"bin/{applet}")
            link.type, link.linkname = tarfile.SYMTYPE, "busybox"
            tar.addfile(link)
    layer = gzip.compress(raw.getvalue(), mtime=0)
    config = json.dumps(
        {"architecture": "amd64", "os": "linux", "config": {"Env": ["PATH=/bin"]}}
    ).encode()
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": _digest(config),
                "size": len(config),
            },
            "layers": [
                {
                    "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": _digest(layer),
                    "size": len(layer),
                }
            ],
        }
    ).encode()
    blobs = dest / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    for blob in (layer, config, manifest):
        (blobs / _digest(blob)[7:]).write_bytes(blob)
    index = {
        "schemaVersion": 2,
        "manifests": [
            {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": _digest(manifest),
                "size": len(manifest),
                "annotations": {"org.opencontainers.image.ref.name": "latest"},
            }
        ],
    }
    (dest / "index.json").write_text(json.dumps(index))
    (dest / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    return dest


def _tar(src: Path, dest: Path) -> Path:
    with tarfile.open(dest, "w") as tar:
        for item in sorted(src.rglob("*")):
            tar.add(item, arcname=str(item.relative_to(src)), recursive=False)
    return dest


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def loopback_registry(root: Path) -> Iterator[str]:
    port = _port()
    (root / "config.yml").write_text(
        f"version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: "
        f"{root / 'data'}\nhttp:\n  addr: 127.0.0.1:{port}\n"
    )
    proc = subprocess.Popen(
        ["docker-registry", "serve", str(root / "config.yml")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"http://127.0.0.1:{port}/v2/", timeout=1).status_code == 200:
                    break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise ApplianceError("docker-registry did not start")
            time.sleep(0.05)
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


def _pull(c: httpx.Client, ref: str) -> float:
    t0 = time.perf_counter()
    canonical = c.post("/api/images/pull", json={"ref": ref}).json()["ref"]
    while True:
        status = next(p for p in c.get("/api/images/pulls").json() if p["ref"] == canonical)
        if status["status"] != "pulling":
            break
        time.sleep(0.005)
    if status["status"] != "done":
        raise ApplianceError(f"pull failed: {status['error']}")
    return (time.perf_counter() - t0) * 1000


def _runs(c: httpx.Client, runs: int, body: dict[str, Any]) -> list[float]:
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        r = c.post("/api/run", json=body)
        out.append((time.perf_counter() - t0) * 1000)
        if r.status_code != 200 or r.json()["stdout"] != "1\n":
            raise ApplianceError(f"run failed: {r.status_code} {r.text[:300]}")
    return out


def _row(name: str, samples: list[float]) -> str:
    return (
        f"  {name:<40} p50 {pct(samples, 0.5):7.1f} ms   p95 {pct(samples, 0.95):7.1f} ms   "
        f"(n={len(samples)})"
    )


def run(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="appliance-bench-images-") as tmp:
        root = Path(tmp)
        layout = None if args.archive else busybox_layout(root / "layout")
        archive = args.archive or _tar(layout, root / "layout.tar")  # type: ignore[arg-type]
        have_registry = layout is not None and all(
            shutil.which(t) for t in ("docker-registry", "skopeo")
        )
        with contextlib.ExitStack() as stack:
            registry = stack.enter_context(loopback_registry(root)) if have_registry else None
            sandbox = f'insecure_registries = ["{registry}"]' if registry else ""
            d = stack.enter_context(bench_daemon({}, sandbox_config=f"pool = {{}}\n{sandbox}"))
            c = stack.enter_context(httpx.Client(base_url=d.url, timeout=120))
            t0 = time.perf_counter()
            r = c.post(
                "/api/images/import",
                params={"name": REF},
                content=archive.read_bytes(),
                headers={"Content-Type": "application/octet-stream"},
            )
            if r.status_code != 201:
                raise ApplianceError(f"import failed: {r.text[:300]}")
            print(
                f"import of {archive.name} ({archive.stat().st_size / 1e6:.1f} MB): "
                f"{(time.perf_counter() - t0) * 1000:.0f} ms"
            )
            if registry is not None and layout is not None:
                pushed = f"{registry}/bench/busybox:1"
                subprocess.run(
                    [
                        "skopeo",
                        "copy",
                        "--dest-tls-verify=false",
                        "--insecure-policy",
                        f"oci:{layout}:latest",
                        f"docker://{pushed}",
                    ],
                    check=True,
                    capture_output=True,
                )
                print(
                    f"pull from a loopback registry, cold: {_pull(c, pushed):.0f} ms; "
                    f"again (all blobs present): {_pull(c, pushed):.0f} ms"
                )
            else:
                print("pull: skipped (needs docker-registry and skopeo, and no --archive)")
            code = {"language": "sh", "code": "echo 1"}
            host = _runs(c, args.runs, code)
            in_lang = _runs(c, args.runs, {**code, "image": REF})
            in_cmd = _runs(c, args.runs, {"image": REF, "command": ["echo", "1"]})
        print("one-shot runs (POST /api/run, at the client):")
        print(_row("sh on the host toolchain", host))
        print(_row("sh in the image (language)", in_lang))
        print(_row("echo in the image (command)", in_cmd))
        print(f"image/host p50 ratio: {pct(in_lang, 0.5) / pct(host, 0.5):.2f}")
    return 0
