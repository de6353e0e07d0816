"""The daemon's side of a model worker process: spawn it, talk to it, notice when it dies.

`ProcessSpawner.spawn()` starts `python -m appliance.models.worker` and returns once the worker has
imported llama_cpp and said Hello. `WorkerProcess` multiplexes requests over the pipe by id and
turns the worker's death (abort, OOM kill, SIGKILL) into a WorkerCrashed error for each request it
was serving, then tells its owner through `on_exit`.

While requests are pending a watchdog pings the worker, whose reader thread answers at once
whatever its requests are doing (a long prefill, a wait for flow-control credit). A worker that
sends nothing for `answer_timeout` seconds (stopped, or wedged as a whole) is killed: its requests
fail with WorkerTimeout (504) and its owner sees it exit like any other death. A model load is
not watched here; it has its own timeout.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import logging
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING

from appliance.errors import (
    ApplianceError,
    InvalidRequest,
    ModelUnavailable,
    WorkerCrashed,
    WorkerTimeout,
)
from appliance.models.jail import Jail, JailedCommand
from appliance.models.worker import protocol as p

if TYPE_CHECKING:
    from appliance.models.runner import Worker

log = logging.getLogger("appliance.worker")

_ids = itertools.count(1)


def expect(result: p.Result, kind: type[p.R]) -> p.R:
    """`result` as the `kind` its request is answered with; WorkerCrashed when it is another."""
    if not isinstance(result, kind):
        raise WorkerCrashed(
            f"the worker answered with a {type(result).__name__} where a {kind.__name__} was due"
        )
    return result


class RequestStream:
    """Events of one request: Delta* then Done, or an exception."""

    def __init__(self, worker: WorkerProcess, req_id: int, window: int = 0) -> None:
        self.worker = worker
        self.id = req_id
        self.window = window
        self.consumed = 0
        self.granted = window
        self.queue: asyncio.Queue[p.Delta | p.Done | BaseException] = asyncio.Queue()
        self.finished = asyncio.Event()
        self.cancelled = False

    def __aiter__(self) -> AsyncIterator[p.Delta | p.Done]:
        return self._iter()

    async def _iter(self) -> AsyncIterator[p.Delta | p.Done]:
        held: p.Delta | p.Done | BaseException | None = None
        while True:
            item = held if held is not None else await self.queue.get()
            held = None
            if isinstance(item, BaseException):
                raise item
            # a consumer that fell behind gets the queued tokens as one delta, not one by one
            merged = 1
            while isinstance(item, p.Delta) and not self.queue.empty():
                nxt = self.queue.get_nowait()
                if isinstance(nxt, p.Delta):
                    lps = (item.logprobs or []) + (nxt.logprobs or [])
                    item = p.Delta(id=item.id, text=item.text + nxt.text, logprobs=lps or None)
                    merged += 1
                else:
                    held = nxt
                    break
            if isinstance(item, p.Delta) and self.window:
                await self._grant(merged)
            yield item
            if isinstance(item, p.Done):
                return

    async def _grant(self, consumed: int) -> None:
        """Let the worker run a window ahead of what the consumer has taken."""
        self.consumed += consumed
        if self.granted - self.consumed <= self.window // 2 and not self.finished.is_set():
            self.granted = self.consumed + self.window
            with contextlib.suppress(ApplianceError):
                await self.worker.send(p.Credit(id=self.id, upto=self.granted))

    async def result(self, kind: type[p.R]) -> p.R:
        """The request's result, which must be a `kind` (else the worker broke the protocol)."""
        async for ev in self:
            if isinstance(ev, p.Done):
                return expect(ev.result, kind)
        raise WorkerCrashed("the worker ended the request without a result")

    async def cancel(self) -> None:
        """Ask the worker to stop; returns at once (the stream finishes when the worker agrees)."""
        if not self.finished.is_set() and not self.cancelled:
            self.cancelled = True
            await self.worker.send(p.Cancel(id=self.id))


class WorkerProcess:
    def __init__(
        self,
        proc: asyncio.subprocess.Process,
        hello: p.Hello,
        jailed: JailedCommand | None = None,
        answer_timeout: float | None = None,
    ) -> None:
        self.proc = proc
        self.hello = hello
        self.jailed = jailed
        """How the worker was jailed (None: it was not); `pid` is then its host pid, not bwrap's."""
        self.pid = (jailed.child_pid() if jailed is not None else None) or proc.pid
        self.model_id: str | None = None
        self.pending: dict[int, RequestStream] = {}
        self.stderr_tail: collections.deque[str] = collections.deque(maxlen=40)
        self.on_exit: Callable[[Worker, str], None] | None = None
        self.exit_message: str | None = None
        self._load_future: asyncio.Future[p.Loaded] | None = None
        self._unload_future: asyncio.Future[p.Unloaded] | None = None
        self.recycled = 0
        """How many models this process has loaded and dropped again (see `unload`)."""
        self._write_lock = asyncio.Lock()
        self._exited = asyncio.Event()
        self.answer_timeout = answer_timeout
        self.hung = False
        """Set when the watchdog killed the worker for not answering."""
        self._last_heard = time.monotonic()
        self._reader = asyncio.create_task(self._read_events())
        self._errreader = asyncio.create_task(self._read_stderr())
        self._watchdog = asyncio.create_task(self._watch()) if answer_timeout else None

    @property
    def alive(self) -> bool:
        return not self._exited.is_set() and self.proc.returncode is None

    def sees(self, path: str) -> bool:
        """Whether this worker can open `path` (a jailed one sees the model directories only)."""
        return self.jailed is None or self.jailed.sees(path)

    # --- commands ---------------------------------------------------------------------------

    def _gone(self, detail: str = "") -> ApplianceError:
        if self.hung:
            return WorkerTimeout(
                self.exit_message or "the worker process stopped answering and was killed"
            )
        return WorkerCrashed(self.exit_message or ("the worker process is gone" + detail))

    async def send(self, cmd: p.Command) -> None:
        if not self.alive or self.proc.stdin is None:
            raise self._gone()
        async with self._write_lock:
            try:
                self.proc.stdin.write(p.encode(cmd))
                await self.proc.stdin.drain()
            except (ConnectionError, RuntimeError) as exc:
                raise self._gone(f" ({exc})") from exc

    async def load(self, spec: p.Load, timeout: float) -> p.Loaded:
        loop = asyncio.get_running_loop()
        self._load_future = loop.create_future()
        await self.send(spec)
        try:
            return await asyncio.wait_for(asyncio.shield(self._load_future), timeout)
        except TimeoutError:
            await self.kill()
            raise ModelUnavailable(
                f"loading took longer than {timeout:.0f}s; the worker was stopped"
            ) from None

    async def unload(self, timeout: float = 10.0) -> int:
        """Drop the model and become a spare again; returns the process's resident bytes after.

        Only for an idle worker. On any failure the worker is killed, so the caller can always
        fall back to a fresh process."""
        loop = asyncio.get_running_loop()
        self._unload_future = loop.create_future()
        try:
            await self.send(p.Unload())
            done = await asyncio.wait_for(asyncio.shield(self._unload_future), timeout)
        except (TimeoutError, ApplianceError):
            await self.kill()
            raise WorkerCrashed(
                "the worker did not drop its model in time; it was stopped"
            ) from None
        self.model_id = None
        self.on_exit = None
        self.recycled += 1
        return done.rss_bytes

    async def request(self, make: Callable[[int], p.Command]) -> RequestStream:
        req_id = next(_ids)
        cmd = make(req_id)
        stream = RequestStream(self, req_id, window=getattr(cmd, "window", 0))
        if not self.pending:  # the watchdog's silence is counted from the first pending request
            self._last_heard = time.monotonic()
        self.pending[req_id] = stream
        try:
            await self.send(cmd)
        except BaseException:
            self.pending.pop(req_id, None)
            raise
        return stream

    async def call(self, make: Callable[[int], p.Command], kind: type[p.R]) -> p.R:
        """Send one command and wait for its result, a `kind`."""
        stream = await self.request(make)
        return await stream.result(kind)

    async def close(self, grace: float = 3.0) -> None:
        """Ask the worker to exit, then make sure it has: memory only comes back when it is gone."""
        if self.alive:
            with contextlib.suppress(ApplianceError):
                await self.send(p.Shutdown())
            try:
                await asyncio.wait_for(self.proc.wait(), grace)
            except TimeoutError:
                await self.kill()
        await self._exited.wait()

    async def kill(self) -> None:
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            if self.pid != self.proc.pid:  # jailed: the worker itself, not only bwrap
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.pid, signal.SIGKILL)
        await self.proc.wait()

    async def _watch(self) -> None:
        """Ping while requests are pending; kill the worker after answer_timeout of silence."""
        assert self.answer_timeout
        interval = max(0.02, self.answer_timeout / 4)
        while self.alive:
            await asyncio.sleep(interval)
            if not self.pending:
                continue
            silent = time.monotonic() - self._last_heard
            if silent >= self.answer_timeout:
                self.hung = True
                log.warning(
                    "worker %d (%s) sent nothing for %.1fs with %d requests pending; killing it",
                    self.pid,
                    self.model_id,
                    silent,
                    len(self.pending),
                )
                with contextlib.suppress(ProcessLookupError):
                    self.proc.kill()
                return
            if (
                silent >= interval
                and self.proc.stdin is not None
                and not self.proc.stdin.is_closing()
            ):
                # a plain write, never a drain: it must not wait behind a request stuck on a full pipe
                with contextlib.suppress(ConnectionError, RuntimeError):
                    self.proc.stdin.write(p.encode(p.Ping()))

    # --- events -----------------------------------------------------------------------------

    async def _read_events(self) -> None:
        assert self.proc.stdout is not None
        try:
            while True:
                header = await self.proc.stdout.readexactly(p.HEADER.size)
                size = p.frame_size(header)  # over MAX_FRAME: a bad frame, below
                body = await self.proc.stdout.readexactly(size)
                self._last_heard = time.monotonic()
                self._dispatch(p.decode_event(body))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        except Exception:
            log.exception("worker %d: bad frame; stopping it", self.pid)
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
        rc = await self.proc.wait()
        await asyncio.wait([self._errreader], timeout=1.0)
        self._on_exit(rc)

    def _dispatch(self, ev: p.Event) -> None:
        if isinstance(ev, p.Loaded):
            if self._load_future and not self._load_future.done():
                self._load_future.set_result(ev)
            return
        if isinstance(ev, p.Failed) and ev.id == 0:
            if self._load_future and not self._load_future.done():
                self._load_future.set_exception(ModelUnavailable(ev.message))
            return
        if isinstance(ev, p.Unloaded):
            if self._unload_future and not self._unload_future.done():
                self._unload_future.set_result(ev)
            return
        if isinstance(ev, p.Hello | p.Pong):
            return
        stream = self.pending.get(ev.id)
        if stream is None:
            return
        if isinstance(ev, p.Failed):
            self.pending.pop(ev.id, None)
            err: ApplianceError = (
                InvalidRequest(ev.message)
                if ev.kind == "invalid_request"
                else ApplianceError(ev.message)
            )
            if ev.kind == "context_overflow" or "context_length_exceeded" in ev.message:
                err = InvalidRequest(ev.message, code="context_length_exceeded")
            stream.queue.put_nowait(err)
            stream.finished.set()
        elif isinstance(ev, p.Done):
            self.pending.pop(ev.id, None)
            stream.queue.put_nowait(ev)
            stream.finished.set()
        else:
            stream.queue.put_nowait(ev)

    async def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        while True:
            line = await self.proc.stderr.readline()
            if not line:
                return
            text = line.decode("utf-8", "replace").rstrip()
            if text:
                self.stderr_tail.append(text)
                log.debug("worker %d: %s", self.pid, text)

    def _on_exit(self, rc: int) -> None:
        if self.jailed is not None and 128 < rc < 128 + 65:
            rc = 128 - rc  # bwrap exits 128+N when the worker was killed by signal N
        if rc < 0:
            try:
                how = f"was killed by {signal.Signals(-rc).name}"
            except ValueError:
                how = f"was killed by signal {-rc}"
        else:
            how = f"exited with status {rc}"
        if rc in (-6, 134):
            how += " (llama.cpp aborted: the model file may be malformed)"
        elif rc == -9:
            how += " (killed: out of memory, or stopped by hand)"
        if self.hung:
            how = (
                f"stopped answering for {self.answer_timeout:g}s (models.worker_timeout_s) and was killed; "
                "the model loads afresh on the next request"
            )
        tail = [ln for ln in self.stderr_tail if ln.strip()][-3:]
        model = f"model {self.model_id!r}" if self.model_id else "a spare worker"
        msg = f"the worker process of {model} {how}"
        if tail and not self.hung:
            msg += ": " + " | ".join(tail)
        self.exit_message = msg
        self._exited.set()
        if self._watchdog is not None:
            self._watchdog.cancel()
        if self._load_future and not self._load_future.done():
            self._load_future.set_exception(
                ModelUnavailable(msg + ". Check the model file, then retry.")
            )
        if self._unload_future and not self._unload_future.done():
            self._unload_future.set_exception(WorkerCrashed(msg))
        failure = WorkerTimeout if self.hung else WorkerCrashed
        for stream in list(self.pending.values()):
            stream.queue.put_nowait(failure(msg + ". The request failed; retry it."))
            stream.finished.set()
        self.pending.clear()
        if self.on_exit is not None:
            self.on_exit(self, msg)


WORKER_SPINCOUNT = "1000"
"""How long llama.cpp's OpenMP threads spin before they sleep, between the steps of a decode.

libgomp's default (300,000 spins) assumes the cores are the decode's alone. On a small box where
anything else runs (a sandboxed program, another model, the daemon), a spinning thread holds the
core its partner needs and each token waits for the scheduler: measured on 2 cores with one busy
process beside it, 6.4 ms/token became 410-765 ms/token. At 1000 spins an idle machine decodes as
fast (6.3 ms/token) and the busy one at 31 ms/token. A GOMP_SPINCOUNT in the daemon's environment
wins."""


class ProcessSpawner:
    """Starts real worker processes."""

    def __init__(
        self,
        python: str | None = None,
        hello_timeout: float = 120.0,
        env: dict[str, str] | None = None,
        answer_timeout: float | None = None,
        jail: Jail | None = None,
    ) -> None:
        self.python = python or sys.executable
        self.hello_timeout = hello_timeout
        self.answer_timeout = answer_timeout
        """Seconds a worker with pending requests may stay silent before it is killed (None: forever)."""
        self.env = env or {}
        """Added to every worker's environment (the daemon marks its workers with its state dir)."""
        self.jail = jail
        """Where the host allows, workers run in it (appliance.host.worker_jail); else unjailed."""

    async def spawn(self) -> WorkerProcess:
        # Spawned from the event loop's thread, like sandboxes: the worker's death signal (armed
        # in the worker) fires when the thread that forked it ends, and the loop's lives as long
        # as the daemon.
        env = {
            k: v for k, v in os.environ.items() if not k.startswith("APPLIANCE_TOKEN")
        } | self.env
        env.setdefault("GGML_NO_BACKTRACE", "1")  # an abort should end the worker, not attach gdb
        env.setdefault("GOMP_SPINCOUNT", WORKER_SPINCOUNT)
        argv = [self.python, "-m", "appliance.models.worker"]
        jailed = None
        if self.jail is not None and await self.jail.unusable() is None:
            jailed = self.jail.command(argv, models=True)
        try:
            proc = await asyncio.create_subprocess_exec(
                *(jailed.argv if jailed is not None else argv),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=env,
                pass_fds=jailed.pass_fds if jailed is not None else (),
                start_new_session=True,  # a Ctrl-C in the daemon's terminal is the daemon's to handle
            )
        finally:
            if jailed is not None:
                jailed.close_child_fds()
        assert proc.stdout is not None
        try:
            header = await asyncio.wait_for(
                proc.stdout.readexactly(p.HEADER.size), self.hello_timeout
            )
            (size,) = p.HEADER.unpack(header)
            hello = p.decode_event(await proc.stdout.readexactly(size))
        except (TimeoutError, asyncio.IncompleteReadError) as exc:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            if jailed is not None:
                jailed.discard()
            err = b""
            if proc.stderr is not None:
                with contextlib.suppress(Exception):
                    err = await asyncio.wait_for(proc.stderr.read(), 2)
            raise ModelUnavailable(
                "a model worker process failed to start: "
                + (err.decode(errors="replace").strip().splitlines() or ["no output"])[-1]
                + ". Is llama-cpp-python installed? Run `appliance doctor`."
            ) from exc
        except BaseException:  # cancelled (the daemon stops while a spare starts): end it too
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            raise
        if not isinstance(hello, p.Hello):
            proc.kill()
            if jailed is not None:
                jailed.discard()
            raise ModelUnavailable("a model worker spoke out of turn at start-up")
        return WorkerProcess(proc, hello, jailed, answer_timeout=self.answer_timeout)
