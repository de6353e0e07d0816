"""Workspace file access: what the file API refuses, and output splitting per REPL cell."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from appliance.sandbox.errors import UploadTooLarge, WorkspaceFileNotFound, WorkspacePathRefused
from appliance.sandbox.identity import SandboxIdentity
from appliance.sandbox.streams import CappedBuffer, MarkerSplitter
from appliance.sandbox.workspace import Workspace, read_capped, refusal, split_path

ME = SandboxIdentity(host_uid=os.getuid(), host_gid=os.getgid(), daemon_is_root=False)


@pytest.fixture
def ws(tmp_path: Path) -> Workspace:
    return Workspace.create(tmp_path, "sbx-test", ME)


@pytest.mark.parametrize(
    "bad", ["/etc/passwd", "/workspace/x", "../x", "a/../../x", "a/..", "", ".", "x\x00y"]
)
def test_paths_that_are_refused(bad: str) -> None:
    with pytest.raises(WorkspacePathRefused):
        split_path(bad)


def test_absolute_paths_get_a_relative_suggestion() -> None:
    with pytest.raises(WorkspacePathRefused) as err:
        split_path("/workspace/data/in.txt")
    assert "'data/in.txt'" in err.value.message


def test_write_read_and_list(ws: Workspace) -> None:
    ws.write_file("data/deep/in.txt", b"hello")
    ws.write_file("./top.txt", b"x")
    assert ws.read_file("data/deep/in.txt", 100) == b"hello"
    listed = {(e.path, e.type, e.size) for e in ws.list_files()}
    assert ("data/deep/in.txt", "file", 5) in listed and ("data", "dir", 0) in listed
    assert ("top.txt", "file", 1) in listed


def test_missing_files_are_404(ws: Workspace) -> None:
    with pytest.raises(WorkspaceFileNotFound):
        ws.read_file("nope.txt", 10)
    with pytest.raises(WorkspaceFileNotFound):
        ws.read_file("no/dir/file", 10)


def test_symlinks_pointing_outside_are_refused(ws: Workspace, tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("host secret")
    (ws.path / "abs").symlink_to(secret)
    (ws.path / "rel").symlink_to("../secret.txt")
    (ws.path / "etc").symlink_to("/etc")
    for name in ("abs", "rel", "etc/passwd"):
        with pytest.raises(WorkspacePathRefused, match="outside the workspace"):
            ws.read_file(name, 1000)
    with pytest.raises(WorkspacePathRefused):
        ws.write_file("etc/evil", b"x")
    assert not Path("/etc/evil").exists()
    with pytest.raises(WorkspacePathRefused):
        ws.write_file("rel", b"overwrite")
    assert secret.read_text() == "host secret"


def test_symlinks_that_stay_inside_are_followed(ws: Workspace) -> None:
    ws.write_file("real/file.txt", b"inside")
    (ws.path / "alias").symlink_to("real")
    (ws.path / "abs-alias").symlink_to("/workspace/real/file.txt")
    assert ws.read_file("alias/file.txt", 100) == b"inside"
    assert ws.read_file("abs-alias", 100) == b"inside"


def test_special_files_and_oversize_reads(ws: Workspace) -> None:
    os.mkfifo(ws.path / "fifo")
    with pytest.raises(WorkspacePathRefused, match="regular file"):
        ws.read_file("fifo", 10)  # returns at once instead of blocking the daemon
    ws.write_file("big", b"x" * 100)
    with pytest.raises(UploadTooLarge):
        ws.read_file("big", 99)


def test_usage_and_destroy_through_read_only_directories(ws: Workspace) -> None:
    ws.write_file("a/b.bin", b"y" * 10000)
    size, entries = ws.usage()
    assert size >= 10000 and entries == 2
    (ws.path / "a").chmod(0o500)  # what sandboxed code may do to its own directories
    ws.destroy()
    assert not ws.path.exists()


def test_capped_buffer_counts_what_it_drops() -> None:
    buf = CappedBuffer(5)
    buf.feed(b"abc")
    buf.feed(b"defg")
    assert buf.take() == (b"abcde", True)
    assert buf.total == 7


def test_marker_splitting_across_chunks() -> None:
    marker = b"\x00END-1\x00"
    s = MarkerSplitter(cap=100)
    s.feed(b"early ")
    s.expect(marker)
    for chunk in (b"cell out", b"put\x00EN", b"D-1", b"\x00next cell"):
        s.feed(chunk)
    assert s.done is not None and s.done.data == b"early cell output" and not s.done.truncated
    s.expect(b"\x00END-2\x00")
    s.feed(b"\x00END-2\x00")
    assert s.done is not None and s.done.data == b"next cell"


def test_marker_splitting_with_a_capped_cell() -> None:
    s = MarkerSplitter(cap=4)
    s.expect(b"<M>")
    s.feed(b"0123456789<")
    assert s.pending_bytes == 11
    s.feed(b"M>tail")
    assert s.done is not None and (s.done.data, s.done.truncated) == (b"0123", True)
    assert s.drain_unmarked().data == b"tail"


def test_symlink_loops_are_refused_not_raised(ws: Workspace) -> None:
    (ws.path / "loop").symlink_to("loop")
    (ws.path / "ping").symlink_to("pong")
    (ws.path / "pong").symlink_to("ping")
    (ws.path / "self").symlink_to("/workspace")
    for rel in ("loop", "ping", "loop/x", "ping/deeper/file", "self"):
        with pytest.raises(WorkspacePathRefused, match="symlink"):
            ws.read_file(rel, 100)
        with pytest.raises(WorkspacePathRefused, match="symlink"):
            ws.write_file(rel, b"x")


def test_names_too_long_for_the_file_system_are_refused(ws: Workspace) -> None:
    long = "n" * 300
    with pytest.raises(WorkspacePathRefused, match="at most 255"):
        split_path(long)
    with pytest.raises(WorkspacePathRefused, match="at most 255"):
        ws.write_file(f"dir/{long}.txt", b"x")
    # a link the sandboxed code made can still lead there: the kernel's refusal becomes a 400
    (ws.path / "far").symlink_to("x" * 300)
    with pytest.raises(WorkspacePathRefused, match="at most 255"):
        ws.read_file("far", 100)
    with pytest.raises(WorkspacePathRefused, match="longer than the file system allows"):
        ws.read_file("far/inner.txt", 100)


@pytest.mark.parametrize(
    ("err", "kind", "words"),
    [
        (errno.ENOENT, WorkspaceFileNotFound, "does not exist"),
        (errno.ENOSPC, UploadTooLarge, "workspace is full"),
        (errno.EDQUOT, UploadTooLarge, "workspace is full"),
        (errno.EACCES, WorkspacePathRefused, "permission denied"),
        (errno.EIO, WorkspacePathRefused, "the kernel refused it"),
    ],
)
def test_every_os_error_becomes_a_client_error(err: int, kind: type, words: str) -> None:
    refused = refusal("a/b.txt", OSError(err, os.strerror(err)))
    assert isinstance(refused, kind) and words in refused.message
    assert 400 <= refused.status < 500


def test_a_file_that_grows_while_read_is_refused(ws: Workspace) -> None:
    ws.write_file("grow.bin", b"x" * 10)
    fd = ws.open_regular("grow.bin")
    try:
        with open(ws.path / "grow.bin", "ab") as f:
            f.write(b"y" * 100)  # after the open, as a still-running program could
        with pytest.raises(UploadTooLarge):
            read_capped(fd, "grow.bin", 50)
    finally:
        os.close(fd)
