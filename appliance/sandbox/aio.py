"""Non-blocking reads and writes on raw file descriptors from the asyncio event loop.

The sandbox runner talks to many small processes through pipes and pidfds. Doing that with the
loop's reader/writer callbacks keeps everything on one thread (no thread per process) and lets a
run wait for a process exit and its output at the same time.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os


async def wait_readable(fd: int) -> None:
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[None] = loop.create_future()

    def ready() -> None:
        if not fut.done():
            fut.set_result(None)

    loop.add_reader(fd, ready)
    try:
        await fut
    finally:
        loop.remove_reader(fd)


async def wait_writable(fd: int) -> None:
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[None] = loop.create_future()

    def ready() -> None:
        if not fut.done():
            fut.set_result(None)

    loop.add_writer(fd, ready)
    try:
        await fut
    finally:
        loop.remove_writer(fd)


async def read_some(fd: int, n: int = 65536) -> bytes:
    """Up to `n` bytes from a non-blocking fd; b'' at end of file."""
    while True:
        try:
            return os.read(fd, n)
        except BlockingIOError:
            await wait_readable(fd)
        except OSError as exc:
            if exc.errno == errno.EIO:
                return b""
            raise


async def read_exact(fd: int, n: int) -> bytes:
    """Exactly `n` bytes, or EOFError when the writer goes away first."""
    buf = bytearray()
    while len(buf) < n:
        chunk = await read_some(fd, n - len(buf))
        if not chunk:
            raise EOFError(f"pipe closed after {len(buf)} of {n} bytes")
        buf += chunk
    return bytes(buf)


async def read_to_end(fd: int, limit: int = 1 << 20) -> bytes:
    buf = bytearray()
    while len(buf) <= limit:
        chunk = await read_some(fd)
        if not chunk:
            break
        buf += chunk
    return bytes(buf)


async def write_all(fd: int, data: bytes) -> None:
    """Write everything to a non-blocking fd (BrokenPipeError when the reader is gone)."""
    view = memoryview(data)
    while view:
        try:
            n = os.write(fd, view)
            view = view[n:]
        except BlockingIOError:
            await wait_writable(fd)


def set_nonblocking(*fds: int) -> None:
    for fd in fds:
        os.set_blocking(fd, False)


def close_quietly(*fds: int | None) -> None:
    for fd in fds:
        if fd is not None and fd >= 0:
            with contextlib.suppress(OSError):
                os.close(fd)
