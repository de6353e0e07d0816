"""The bwrap arguments of a sandbox in an image, read as data: the image's root at /, the host's
/usr and /etc nowhere, the same isolation flags as a host-toolchain sandbox."""

from __future__ import annotations

from pathlib import Path

from appliance.sandbox.images.runtime import (
    HostHelper,
    ImageRoot,
    image_cwd,
    image_env,
    image_mounts,
    parse_env,
    resolve_in_root,
)
from appliance.sandbox.policy import SandboxPolicy, bwrap_args


def _image(tmp_path: Path) -> ImageRoot:
    root = tmp_path / "root"
    (root / "usr" / "bin").mkdir(parents=True)
    (root / "usr" / "bin" / "tool").write_text("#!/bin/sh\n")
    (root / "bin").symlink_to("usr/bin")
    (root / "app").mkdir()
    (root / "etc").mkdir()
    (root / "etc" / "loop").symlink_to("/etc/loop")
    return ImageRoot(
        name="localhost/x:1",
        digest="sha256:" + "0" * 64,
        path=root,
        env=parse_env(["PATH=/usr/bin", "HOME=/root", "A=b=c", "broken"]),
        workdir="/app",
    )


def test_the_image_root_is_bound_read_only_at_the_top_and_nothing_of_the_host(
    tmp_path: Path,
) -> None:
    image = _image(tmp_path)
    helper = HostHelper((("/usr/bin/setpriv", "/opt/appliance/host/setpriv"),), ("x",))
    mounts = image_mounts(
        image=image,
        etc_dir=tmp_path / "etc",
        workspace=tmp_path / "ws",
        drivers=[],
        helper=helper,
        tmp_bytes=1 << 20,
        network=False,
    )
    args = bwrap_args(SandboxPolicy(command=("sh",), mounts=mounts, cwd=image_cwd(image)))
    assert args[args.index("--ro-bind") : args.index("--ro-bind") + 3] == [
        "--ro-bind",
        str(image.path),
        "/",
    ]
    binds = [args[i + 1] for i, a in enumerate(args) if a in ("--ro-bind", "--bind")]
    assert not [b for b in binds if b in ("/usr", "/bin", "/lib", "/etc/ld.so.cache")]
    assert "/usr/bin/setpriv" in binds  # the root daemon's helper, under /opt/appliance/host
    assert "--unshare-all" in args and "--remount-ro" in args and "--share-net" not in args
    assert args[args.index("--chdir") + 1] == "/app"


def test_env_and_links_resolve_inside_the_image(tmp_path: Path) -> None:
    image = _image(tmp_path)
    env = dict(image_env(image))
    assert env["PATH"] == "/usr/bin" and env["A"] == "b=c" and env["HOME"] == "/workspace"
    assert resolve_in_root(image.path, "/bin/tool") == str(image.path / "usr" / "bin" / "tool")
    assert resolve_in_root(image.path, "/../../bin/tool") is not None  # .. stops at the root
    assert resolve_in_root(image.path, "/etc/loop") is None  # a loop, never the host's /etc
    missing = ImageRoot(name="x", digest="", path=image.path, workdir="/nowhere")
    assert image_cwd(missing) == "/workspace"
