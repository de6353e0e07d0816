"""The layer unpacker and the layer merge against hostile and tricky tars (no sandbox needed).

Every refused layer leaves nothing behind: not in the layer's directory, not outside it.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from appliance.sandbox.images.errors import ImageRefused, LayerTooLarge
from appliance.sandbox.images.reference import parse_ref
from appliance.sandbox.images.store import apply_layer, ensure_mount_points
from appliance.sandbox.images.unpack import LayerStats, unpack_layer
from tests.fixtures.oci_images import Entry, layer_tar

MB = 1024 * 1024


def _unpack(
    tmp_path: Path, entries: list[Entry], *, compress: bool = False, max_bytes: int = MB
) -> tuple[LayerStats, Path]:
    blob = tmp_path / "layer.tar"
    blob.write_bytes(layer_tar(entries, compress=compress))
    dest = tmp_path / "store" / "layer"
    dest.parent.mkdir(exist_ok=True)
    return unpack_layer(blob, dest, max_bytes=max_bytes), dest


def _everything(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@pytest.mark.parametrize(
    ("entries", "fragment"),
    [
        ([Entry("../escape.txt", data=b"x")], "'..'"),
        ([Entry("a/../../escape.txt", data=b"x")], "'..'"),
        ([Entry("/etc/evil", data=b"x")], "absolute"),
        # a symlink to the host's /etc, then a file written "through" it
        ([Entry("etc", "symlink", target="/etc"), Entry("etc/evil", data=b"x")], "symlink"),
        ([Entry("up", "symlink", target="../../.."), Entry("up/evil", data=b"x")], "symlink"),
        ([Entry("link", "hardlink", target="../outside")], "'..'"),
        ([Entry("link", "hardlink", target="/etc/passwd")], "absolute"),
        ([Entry("link", "hardlink", target="missing")], "earlier file"),
        ([Entry(".wh..", data=b"")], "whiteout of nothing"),
        ([Entry("a/" * 200 + "deep", data=b"x")], "nested"),
        ([Entry("n" * 3000, data=b"x")], "name over"),
    ],
)
def test_hostile_layers_are_refused_and_leave_nothing(
    tmp_path: Path, entries: list[Entry], fragment: str
) -> None:
    before = _everything(tmp_path)
    with pytest.raises(ImageRefused, match=fragment):
        _unpack(tmp_path, entries)
    after = _everything(tmp_path)
    assert after - before <= {"layer.tar", "store"}, after - before
    assert not (tmp_path / "escape.txt").exists()
    assert not (tmp_path / "store" / "layer").exists()


def test_devices_fifos_and_setuid_are_neutralised(tmp_path: Path) -> None:
    stats, dest = _unpack(
        tmp_path,
        [
            Entry("dev", "dir", mode=0o755),
            Entry("dev/null", "chardev"),
            Entry("pipe", "fifo"),
            Entry("bin", "dir", mode=0o755),
            Entry("bin/su", data=b"#!/bin/sh\n", mode=0o6755),
            Entry("secret", data=b"s", mode=0o000),
            Entry("etc", "symlink", target="/etc"),  # kept as a link, never followed here
        ],
        compress=True,
    )
    assert stats.skipped == 2
    assert not (dest / "dev" / "null").exists() and not (dest / "pipe").exists()
    su_mode = stat.S_IMODE(os.lstat(dest / "bin" / "su").st_mode)
    assert su_mode == 0o755, oct(su_mode)  # setuid and setgid dropped
    assert stat.S_IMODE(os.lstat(dest / "secret").st_mode) == 0o600  # the store can remove it
    assert os.readlink(dest / "etc") == "/etc"


def test_hard_links_within_the_layer_work(tmp_path: Path) -> None:
    _, dest = _unpack(
        tmp_path, [Entry("a", data=b"shared"), Entry("dir/b", "hardlink", target="a")]
    )
    assert (dest / "dir" / "b").read_bytes() == b"shared"
    assert os.lstat(dest / "a").st_ino == os.lstat(dest / "dir" / "b").st_ino


def test_size_limit(tmp_path: Path) -> None:
    with pytest.raises(LayerTooLarge, match="max_layer_mb"):
        _unpack(tmp_path, [Entry("big", data=b"x" * (MB + 1))], max_bytes=MB)
    assert not (tmp_path / "store" / "layer").exists()


def test_not_a_tar_is_refused(tmp_path: Path) -> None:
    blob = tmp_path / "junk"
    blob.write_bytes(b"\x1f\x8b" + os.urandom(200))
    with pytest.raises(ImageRefused, match="not a readable tar"):
        unpack_layer(blob, tmp_path / "out", max_bytes=MB)


def test_merge_applies_whiteouts_and_opaque_dirs_and_replaces_symlinks(tmp_path: Path) -> None:
    _, lower = _unpack(
        tmp_path,
        [
            Entry("etc/keep", data=b"k"),
            Entry("etc/gone", data=b"g"),
            Entry("var/cache/a", data=b"a"),
            Entry("var/cache/b", data=b"b"),
            Entry("tmp", "symlink", target="/etc"),  # a mount point that is a link
        ],
    )
    upper_dir = tmp_path / "upper"
    upper_dir.mkdir()
    _, upper = _unpack(
        upper_dir,
        [
            Entry("etc/.wh.gone"),
            Entry("var/cache/.wh..wh..opq"),
            Entry("var/cache/c", data=b"c"),
        ],
    )
    root = tmp_path / "root"
    root.mkdir()
    modes: dict[str, int] = {}
    apply_layer(lower, root, modes)
    apply_layer(upper, root, modes)
    ensure_mount_points(root, modes)
    assert (root / "etc" / "keep").read_bytes() == b"k"
    assert not (root / "etc" / "gone").exists()
    assert sorted(os.listdir(root / "var" / "cache")) == ["c"]
    assert (root / "tmp").is_dir() and not (root / "tmp").is_symlink()
    assert (root / "etc" / "passwd").is_file() and (root / "workspace").is_dir()
    assert not any(p.name.startswith(".wh.") for p in root.rglob("*"))


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("busybox", "docker.io/library/busybox:latest"),
        ("127.0.0.1:5000/tools/bb:1", "127.0.0.1:5000/tools/bb:1"),
        ("localhost/x", "localhost/x:latest"),
        ("ghcr.io/a/b@sha256:" + "0" * 64, "ghcr.io/a/b@sha256:" + "0" * 64),
    ],
)
def test_references(text: str, canonical: str) -> None:
    assert str(parse_ref(text)) == canonical


@pytest.mark.parametrize("text", ["", "UPPER/case", "a b", "x@sha256:12", "x:tag with space"])
def test_bad_references_are_refused(text: str) -> None:
    with pytest.raises(ImageRefused):
        parse_ref(text)
