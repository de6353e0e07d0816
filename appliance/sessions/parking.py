"""Context retention: where each session's KV cache is, and parking it on disk when it must leave.

`KvParking` is the one owner of a session's lifecycle (created -> active -> parked -> active...):
it alone writes a session's `status` (tests/unit/test_session_status_owner.py checks that), and
it is handed to the services that need it (ChatService as its slot keeper, SessionService, the
agent loop) by the composition root, appliance.app.

While a session is hot, its tokens live in a slot of its model's worker (requests carry the
session id as `slot_key`), so a turn evaluates only the new tokens. `KvParking` keeps track of
which sessions are hot in which worker and whether the slot holds tokens that are not on disk yet
("dirty"), and parks them, that is saves the slot's sequence state into
`<state_dir>/kv/<model fingerprint>/<session id>.kv` and indexes it in `store.kv`, when:

- the session has been idle for `idle_s` (the slot stays hot; the copy on disk is a safety net),
- its model is about to be unloaded (a scheduler `before_unload` hook, the worker still alive),
- its slot is given to another session, or to a request without one (a plain chat completion, when
  every free slot is bound): the worker itself saves the displaced state into the directory the
  request names (`park_evicted_to`) and reports it, and `settle` (`plain_settled`) indexes it,
- the daemon stops.

Before each model call `plan` looks the session's entry up for the model's fingerprint (a hash of
the file's path, size, mtime and first MiB, so another model, or the same path with new content,
never matches) and hands the path and the indexed token prefix hash to the worker, which restores
it only when its slot no longer holds the session and the file's tokens prefix the prompt; a
damaged or mismatched file is reported, dropped from the index and deleted, and the turn pays a full
prefill. Parked files stay within `kv_disk_budget_mb`, least recently used evicted first, and go
with their session.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from appliance.errors import ApplianceError, NotFound
from appliance.models.catalog import ModelCatalog
from appliance.models.scheduler import ModelScheduler, Runner, Worker
from appliance.models.worker import protocol as p
from appliance.openai.chat import SlotFields
from appliance.store import KvEntry, Store
from appliance.store.sessions import SessionStatus
from appliance.telemetry.events import EventBus

log = logging.getLogger("appliance.kv")

SAVE_TIMEOUT_S = 60.0
"""A save that takes longer is abandoned (the session then falls back to a prefill)."""
STOP_BUDGET_S = 15.0
"""How long the daemon's stop may spend parking hot sessions."""
MiB = 2**20


def model_fingerprint(path: Path) -> str:
    """Identity of a model file: its resolved path, size, mtime and first MiB. Blocking."""
    st = path.stat()
    h = hashlib.sha256(f"{path.resolve()}\0{st.st_size}\0{st.st_mtime_ns}\0".encode())
    with open(path, "rb") as f:
        h.update(f.read(MiB))
    return h.hexdigest()


@dataclass
class HotSession:
    model_id: str
    worker_pid: int
    fingerprint: str
    dirty: bool = True
    """The slot holds tokens that are not on disk yet."""
    last_turn: float = 0.0
    """When its last turn ended, on the KvParking clock."""


@dataclass
class SlotPlan:
    """What one model call of a session tells the worker about parked state."""

    fingerprint: str | None
    park_dir: str | None
    entry: KvEntry | None

    def fields(self) -> SlotFields:
        return SlotFields(
            park_evicted_to=self.park_dir,
            restore_from=self.entry.path if self.entry else None,
            restore_prefix_hash=self.entry.prefix_hash if self.entry else None,
        )


@dataclass
class KvReport:
    """What one model call of a session did with its parked state."""

    restored: bool = False
    restore_ms: float | None = None
    restored_tokens: int | None = None
    restore_bytes: int | None = None
    restore_tier: str | None = None
    """Where the restored state came from: ram (the worker's RAM tier) or disk."""
    restore_error: str | None = None
    """The parked file could not be used (it was dropped from the index)."""
    restore_skipped: str | None = None
    """Why an intact parked file was not used."""
    tried: bool = False
    """A restore was tried (so `restore_skipped` is meaningful)."""

    def timings(self) -> dict[str, Any]:
        """The report as the `kv_*` fields of a call's timings."""
        out: dict[str, Any] = {"kv_restored": self.restored}
        if self.restored:
            out.update(
                kv_restore_ms=self.restore_ms,
                kv_restored_tokens=self.restored_tokens,
                kv_restore_bytes=self.restore_bytes,
                kv_restore_tier=self.restore_tier,
            )
        elif self.restore_error is not None:
            out["kv_restore_error"] = self.restore_error
        elif self.tried:
            out["kv_restore_skipped"] = self.restore_skipped
        return out


class KvParking:
    def __init__(
        self,
        store: Store,
        scheduler: ModelScheduler,
        catalog: ModelCatalog,
        *,
        kv_dir: Path,
        budget_bytes: int,
        idle_s: float,
        events: EventBus | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.scheduler = scheduler
        self.catalog = catalog
        self.kv_dir = Path(kv_dir)
        self.budget_bytes = budget_bytes
        self.idle_s = idle_s
        self.events = events or EventBus()
        self.clock = clock
        """Seconds, monotonic: what idleness is measured in (tests pass a fake)."""
        self.hot: dict[str, HotSession] = {}
        self._turning: set[str] = set()
        self._locks: dict[str, asyncio.Lock] = {}
        self._fingerprints: dict[tuple[str, int, int], str] = {}
        self._idle_task: asyncio.Task[None] | None = None

    # --- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        self.kv_dir.mkdir(parents=True, exist_ok=True)
        removed = await asyncio.to_thread(
            self._remove_orphans, {e.path for e in await self.store.run(self.store.kv.entries)}
        )
        if removed:
            log.info("removed %d parked KV files no session refers to", removed)
        self.scheduler.before_unload.append(self.before_unload)
        if self.idle_s > 0:
            self._idle_task = asyncio.create_task(self._idle_loop(), name="kv-idle-parking")

    async def stop(self) -> None:
        if self._idle_task is not None:
            self._idle_task.cancel()
            with contextlib.suppress(BaseException):
                await self._idle_task
        with contextlib.suppress(ValueError):
            self.scheduler.before_unload.remove(self.before_unload)
        dirty = [sid for sid, h in self.hot.items() if h.dirty]
        if dirty:
            try:
                await asyncio.wait_for(self._park_all(dirty, "shutdown"), STOP_BUDGET_S)
            except TimeoutError:
                log.warning("stopped before every hot session was parked; they will prefill again")

    async def _park_all(self, session_ids: Iterable[str], reason: str) -> None:
        for sid in session_ids:
            await self.park(sid, reason)

    def _remove_orphans(self, known: set[str]) -> int:
        n = 0
        for path in self.kv_dir.glob("*/*"):
            if str(path) not in known and (path.suffix == ".kv" or ".kv.tmp" in path.name):
                with contextlib.suppress(OSError):
                    path.unlink()
                    n += 1
        return n

    # --- before and after a model call ------------------------------------------------------

    async def fingerprint(self, model_id: str) -> str | None:
        """The fingerprint of the model's file, None while it is not on disk yet."""
        runner = self.scheduler.runners.get(model_id)
        path_s = runner.model_path if runner is not None else None
        if path_s is None:
            prof = self.catalog.get(model_id)
            local = await asyncio.to_thread(
                self.catalog.fetcher.local_path, prof.id, prof.source, prof.convert
            )
            if local is None:
                return None
            path_s = str(local)
        path = Path(path_s)
        try:
            st = await asyncio.to_thread(path.stat)
        except OSError:
            return None
        key = (path_s, st.st_size, st.st_mtime_ns)
        fp = self._fingerprints.get(key)
        if fp is None:
            fp = await asyncio.to_thread(model_fingerprint, path)
            self._fingerprints[key] = fp
        return fp

    def park_dir(self, fingerprint: str) -> Path:
        return self.kv_dir / fingerprint[:16]

    async def plan(self, session_id: str, model_id: str) -> SlotPlan:
        fp = await self.fingerprint(model_id)
        if fp is None:
            return SlotPlan(fingerprint=None, park_dir=None, entry=None)
        entry = await self.store.run(self.store.kv.lookup, session_id, fp)
        return SlotPlan(fingerprint=fp, park_dir=str(self.park_dir(fp)), entry=entry)

    async def plain_fields(self, model_id: str) -> SlotFields | None:
        """For a request without a session: where the worker puts a session's state it displaces."""
        fp = await self.fingerprint(model_id)
        return SlotFields(park_evicted_to=str(self.park_dir(fp))) if fp is not None else None

    async def plain_settled(
        self, model_id: str, fields: SlotFields, worker_pid: int, parked: list[p.ParkReport]
    ) -> None:
        """Index the states a request without a session displaced (runs in the background)."""
        fp = await self.fingerprint(model_id)
        plan = SlotPlan(fingerprint=fp, park_dir=fields.park_evicted_to, entry=None)
        for report in parked:
            try:
                await self._displaced(report, plan, worker_pid)
            except Exception:  # a background task: log, the session falls back to a prefill
                log.exception("indexing the parked state of session %s failed", report.slot_key)

    async def activate(self, session_id: str) -> None:
        """A turn (or a /v1/responses call) starts in the session: it is `active` from now on."""
        await self._set_status(session_id, "active")

    async def _set_status(self, session_id: str, status: SessionStatus) -> None:
        with contextlib.suppress(NotFound):  # deleted meanwhile: nothing to record
            await self.store.run(self.store.sessions.set_status, session_id, status)

    def turn_started(self, session_id: str) -> None:
        self._turning.add(session_id)

    def turn_ended(self, session_id: str) -> None:
        self._turning.discard(session_id)
        if session_id in self.hot:
            self.hot[session_id].last_turn = self.clock()

    async def settle(
        self,
        session_id: str,
        model_id: str,
        plan: SlotPlan,
        worker_pid: int,
        result: p.GenerateResult | None,
    ) -> KvReport:
        """Record what a model call did to the slots (`result` None: the call was cancelled, the
        slot holds the session anyway); returns what it did with the parked state."""
        report = KvReport()
        for parked in result.parked if result is not None else []:
            await self._displaced(parked, plan, worker_pid)
        restore = result.restore if result is not None else None
        from_ram = restore is not None and restore.tier == "ram"
        if restore is not None and (plan.entry is not None or from_ram):
            report.tried = True
            if restore.restored:
                report.restored = True
                report.restore_ms = restore.ms
                report.restored_tokens = restore.n_tokens
                report.restore_bytes = restore.bytes
                report.restore_tier = restore.tier
                if plan.entry is not None:
                    await self.store.run(self.store.kv.touch, plan.entry.id)
                self.events.publish(
                    "session.restored",
                    session=session_id,
                    model=model_id,
                    tier=restore.tier,
                    n_tokens=restore.n_tokens,
                    bytes=restore.bytes,
                    ms=restore.ms,
                )
            elif restore.error and plan.entry is not None and not from_ram:
                report.restore_error = restore.error
                log.warning("session %s: parked KV state not used: %s", session_id, restore.error)
                await self._drop_entry(plan.entry)
            else:
                report.restore_skipped = restore.reason
        if plan.fingerprint is not None:
            self.hot[session_id] = HotSession(
                model_id=model_id,
                worker_pid=worker_pid,
                fingerprint=plan.fingerprint,
                last_turn=self.clock(),
            )
        return report

    async def _displaced(self, parked: p.ParkReport, plan: SlotPlan, worker_pid: int) -> None:
        sid = parked.slot_key
        hot = self.hot.get(sid)
        if parked.tier == "ram" and parked.state is not None:
            # still in that worker (its RAM tier), not on disk: hot for parking's purposes, so
            # an idle timer, an unload or the daemon's stop writes it out like a slot's state
            if hot is not None and hot.worker_pid == worker_pid:
                hot.dirty = True
            await self._set_status(sid, "parked")
            self.events.publish(
                "session.parked",
                session=sid,
                reason="evicted",
                tier="ram",
                bytes=parked.state.bytes,
                n_tokens=parked.state.n_tokens,
                evicted=0,
            )
            return
        if hot is not None and hot.worker_pid == worker_pid:
            del self.hot[sid]
        if parked.state is None or parked.path is None or plan.fingerprint is None:
            log.warning("session %s left its slot without being parked: %s", sid, parked.error)
            return
        async with self._lock(sid):
            await self._index(sid, plan.fingerprint, parked.state, Path(parked.path), "evicted")

    # --- parking ----------------------------------------------------------------------------

    def _lock(self, session_id: str) -> asyncio.Lock:
        return self._locks.setdefault(session_id, asyncio.Lock())

    def _worker(self, hot: HotSession) -> Worker | None:
        runner = self.scheduler.runners.get(hot.model_id)
        worker = runner.worker if runner is not None else None
        if worker is None or worker.pid != hot.worker_pid or not worker.alive:
            return None
        return worker

    async def park(self, session_id: str, reason: str) -> bool:
        """Save the session's slot to disk if it holds unsaved tokens; True when a file was written."""
        async with self._lock(session_id):
            hot = self.hot.get(session_id)
            if hot is None or not hot.dirty:
                return False
            worker = self._worker(hot)
            if worker is None:
                self.hot.pop(session_id, None)  # its worker is gone, and the tokens with it
                return False
            path = self.park_dir(hot.fingerprint) / f"{session_id}.kv"
            try:
                saved = await asyncio.wait_for(
                    worker.call(
                        lambda i: p.SaveSlot(id=i, slot_key=session_id, path=str(path)),
                        p.SaveResult,
                    ),
                    SAVE_TIMEOUT_S,
                )
            except (ApplianceError, TimeoutError) as exc:
                log.warning(
                    "parking session %s failed: %s",
                    session_id,
                    getattr(exc, "message", exc) or "timeout",
                )
                return False
            if saved.state is None:
                self.hot.pop(session_id, None)  # the worker gave its slot away meanwhile
                return False
            hot.dirty = False
            await self._index(session_id, hot.fingerprint, saved.state, path, reason)
            return True

    async def _index(
        self, session_id: str, fingerprint: str, info: p.SavedState, path: Path, reason: str
    ) -> None:
        try:
            res = await self.store.run(
                self.store.kv.park,
                session_id,
                model_fingerprint=fingerprint,
                prefix_hash=info.prefix_hash,
                n_tokens=info.n_tokens,
                bytes=info.bytes,
                path=str(path),
            )
        except NotFound:  # the session was deleted while its state was being written
            await asyncio.to_thread(_unlink, str(path))
            return
        if res.replaced_path:
            await asyncio.to_thread(_unlink, res.replaced_path)
        if reason != "idle":
            await self._set_status(session_id, "parked")
        victims = await self.store.run(self.store.kv.evict_over_budget, self.budget_bytes)
        for v in victims:
            await asyncio.to_thread(_unlink, v.path)
            if v.session_id in self.hot:
                self.hot[v.session_id].dirty = True
        self.events.publish(
            "session.parked",
            session=session_id,
            reason=reason,
            bytes=info.bytes,
            n_tokens=info.n_tokens,
            evicted=len(victims),
        )

    async def _drop_entry(self, entry: KvEntry) -> None:
        path = await self.store.run(self.store.kv.remove, entry.id)
        if path:
            await asyncio.to_thread(_unlink, path)

    async def before_unload(self, runner: Runner) -> None:
        """Scheduler hook: park every dirty session of this worker while it is still alive."""
        worker = runner.worker
        if worker is None:
            return
        mine = [sid for sid, h in self.hot.items() if h.worker_pid == worker.pid]
        for sid in mine:
            # the hot entry goes even when parking fails: the scheduler may recycle this process
            # (same pid) for another load, whose slots no longer hold this session's tokens
            try:
                await self.park(sid, "unload")
            except Exception:
                log.exception("parking session %s before its model unloads failed", sid)
            hot = self.hot.get(sid)
            if hot is not None and hot.worker_pid == worker.pid:
                del self.hot[sid]
                await self._set_status(sid, "parked")

    async def _idle_loop(self) -> None:
        tick = max(0.5, min(10.0, self.idle_s / 4))
        while True:
            await asyncio.sleep(tick)
            await self.park_idle()

    async def park_idle(self) -> list[str]:
        """Park every dirty session idle for `idle_s` and not in a turn; the ids it tried."""
        now = self.clock()
        due = [
            sid
            for sid, h in self.hot.items()
            if h.dirty and sid not in self._turning and now - h.last_turn >= self.idle_s
        ]
        for sid in due:
            try:
                await self.park(sid, "idle")
            except Exception:
                log.exception("parking idle session %s failed", sid)
        return due

    # --- sessions that go away ----------------------------------------------------------------

    async def forget(self, session_ids: Iterable[str], kv_paths: Iterable[str]) -> None:
        """After sessions were deleted: drop what is known of them and delete their files."""
        for sid in session_ids:
            self.hot.pop(sid, None)
            self._locks.pop(sid, None)
        for path in kv_paths:
            await asyncio.to_thread(_unlink, path)

    def stats(self) -> dict[str, Any]:
        return {
            "hot_sessions": len(self.hot),
            "dirty": sum(1 for h in self.hot.values() if h.dirty),
            "budget_bytes": self.budget_bytes,
        }


def _unlink(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
