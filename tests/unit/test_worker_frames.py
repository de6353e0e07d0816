"""MAX_FRAME holds on both sides of the worker pipe: no side writes or buffers a larger frame."""

from __future__ import annotations

import asyncio
import io
import queue
import sys

import pytest

from appliance.errors import PayloadTooLarge
from appliance.models.worker import protocol as p
from appliance.models.worker.main import _read_frames
from appliance.models.worker.process import WorkerProcess


def test_a_message_over_max_frame_is_refused_before_it_is_written(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    small = p.Tokenize(id=1, text="hi")
    monkeypatch.setattr(p, "MAX_FRAME", len(p.encode(small)) - p.HEADER.size)
    assert p.decode_command(p.encode(small)[p.HEADER.size :]) == small  # exactly the limit: sent
    with pytest.raises(PayloadTooLarge, match=r"tokenize message .* over the 0 MiB limit"):
        p.encode(p.Tokenize(id=1, text="hi!"))


def test_a_header_over_max_frame_is_refused() -> None:
    assert p.frame_size(p.HEADER.pack(p.MAX_FRAME)) == p.MAX_FRAME
    with pytest.raises(PayloadTooLarge, match="announces"):
        p.frame_size(p.HEADER.pack(p.MAX_FRAME + 1))


class FakeWorker:
    def __init__(self) -> None:
        self.sent: list[p.Event] = []

    def send(self, msg: p.Event) -> None:
        self.sent.append(msg)

    def cancel(self, req_id: int) -> None:
        raise AssertionError("no cancel was sent")

    def credit(self, cmd: p.Credit) -> None:
        raise AssertionError("no credit was sent")


def test_the_worker_stops_reading_at_a_frame_over_max_frame() -> None:
    stream = io.BytesIO(p.encode(p.Ping()) + p.HEADER.pack(p.MAX_FRAME + 1) + p.encode(p.Ping()))
    worker = FakeWorker()
    jobs: queue.Queue[p.Command | None] = queue.Queue()
    with pytest.raises(PayloadTooLarge):
        _read_frames(stream, worker, jobs)  # type: ignore[arg-type]
    assert worker.sent == [p.Pong()], "the frame before was served, none after"
    assert jobs.get_nowait() is None, "the worker's job loop is told to end"


async def test_the_daemon_kills_a_worker_that_announces_a_frame_over_max_frame() -> None:
    header = p.HEADER.pack(p.MAX_FRAME + 1)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        f"import os, time; os.write(1, {header!r}); time.sleep(60)",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    hello = p.Hello(pid=proc.pid, llama_cpp_version="test", gpu_offload=False, import_ms=0.0)
    worker = WorkerProcess(proc, hello)
    rc = await asyncio.wait_for(proc.wait(), 10)
    assert rc == -9 and not worker.alive
