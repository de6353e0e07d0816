"""KvParking over the real store and real files, with a fake worker: when state is parked, how it
is indexed, the disk budget, and what happens to damaged or orphaned files.

The real worker's side (saving a displaced slot, restoring a file) is in test_kv_worker.py, and
the whole path with SmolLM2 in test_kv_retention.py.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from appliance.models.worker import protocol as p
from appliance.models.worker.kvfile import token_prefix_hash, write_kv_file
from appliance.openai.chat import SlotFields
from appliance.sessions.parking import KvParking, model_fingerprint
from appliance.store import Store
from appliance.telemetry.events import EventBus

KiB = 1024


class FakeWorker:
    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.alive = True
        self.slots: dict[str, list[int]] = {}
        self.saves: list[str] = []

    async def call(self, make: Any, kind: type[p.SaveResult]) -> p.SaveResult:
        cmd = make(1)
        assert isinstance(cmd, p.SaveSlot) and kind is p.SaveResult
        tokens = self.slots.get(cmd.slot_key)
        if tokens is None:
            return p.SaveResult(state=None)
        self.saves.append(cmd.slot_key)
        size = write_kv_file(cmd.path, tokens, bytes(len(tokens) * KiB))
        return p.SaveResult(
            state=p.SavedState(
                bytes=size, n_tokens=len(tokens), prefix_hash=token_prefix_hash(tokens)
            )
        )


def result(**kw: Any) -> p.GenerateResult:
    """A worker's generation result carrying only what the KV parking reads."""
    return p.GenerateResult(
        text="", finish_reason="stop", usage=p.Usage(), timings=p.Timings(), **kw
    )


def parked_at(sid: str, path: Path, size: int, n_tokens: int = 20) -> p.ParkReport:
    tokens = list(range(n_tokens))
    return p.ParkReport(
        slot_key=sid,
        path=str(path),
        state=p.SavedState(bytes=size, n_tokens=n_tokens, prefix_hash=token_prefix_hash(tokens)),
    )


class FakeRunner:
    def __init__(self, worker: FakeWorker, model_path: Path) -> None:
        self.worker: FakeWorker | None = worker
        self.model_path = str(model_path)


class FakeScheduler:
    def __init__(self, runner: FakeRunner) -> None:
        self.runners = {"m": runner}
        self.before_unload: list[Any] = []


@pytest.fixture
async def setup(
    tmp_path: Path,
) -> AsyncIterator[tuple[KvParking, FakeWorker, Store, list[dict[str, Any]]]]:
    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF" + bytes(4096))
    worker = FakeWorker(pid=100)
    events = EventBus()
    seen: list[dict[str, Any]] = []
    store = await Store.open(tmp_path / "state")
    kv = KvParking(
        store,
        FakeScheduler(FakeRunner(worker, model)),
        None,  # type: ignore[arg-type]
        kv_dir=tmp_path / "state" / "kv",
        budget_bytes=200 * KiB,
        idle_s=0,
        events=events,
    )
    orig = events.publish

    def publish(type_: str, **data: Any) -> dict[str, Any]:
        seen.append({"type": type_, **data})
        return orig(type_, **data)

    events.publish = publish  # type: ignore[method-assign]
    await kv.start()
    try:
        yield kv, worker, store, seen
    finally:
        await kv.stop()
        await store.aclose()


async def session(store: Store) -> str:
    return (await store.run(store.sessions.create, None, model="m")).id


async def make_hot(kv: KvParking, worker: FakeWorker, sid: str, n_tokens: int) -> None:
    worker.slots[sid] = list(range(1, n_tokens + 1))
    plan = await kv.plan(sid, "m")
    await kv.settle(sid, "m", plan, worker.pid, None)


async def test_park_writes_indexes_and_replaces(setup: Any) -> None:
    kv, worker, store, seen = setup
    sid = await session(store)
    await make_hot(kv, worker, sid, 40)
    assert await kv.park(sid, "idle") is True
    assert await kv.park(sid, "idle") is False, "nothing new since the last park"
    (entry,) = await store.run(store.kv.entries, sid)
    assert entry.n_tokens == 40 and Path(entry.path).is_file()
    assert entry.prefix_hash == token_prefix_hash(list(range(1, 41)))
    assert Path(entry.path).parent.name == (await kv.fingerprint("m"))[:16]
    assert seen[-1]["type"] == "session.parked" and seen[-1]["reason"] == "idle"
    await make_hot(kv, worker, sid, 60)
    assert await kv.park(sid, "idle") is True
    (again,) = await store.run(store.kv.entries, sid)
    assert again.n_tokens == 60 and again.path == entry.path


async def test_unload_parks_the_dirty_sessions_of_that_worker_only(setup: Any) -> None:
    kv, worker, store, _ = setup
    a, b = await session(store), await session(store)
    await make_hot(kv, worker, a, 30)
    await make_hot(kv, worker, b, 30)
    await kv.park(b, "idle")
    worker.saves.clear()
    await kv.before_unload(kv.scheduler.runners["m"])
    assert worker.saves == [a], "b was already on disk"
    assert kv.hot == {}
    assert (await store.run(store.sessions.get, a)).status == "parked"
    assert (await store.run(store.sessions.get, b)).status == "parked"


async def test_the_disk_budget_evicts_the_least_recently_used_files(setup: Any) -> None:
    kv, worker, store, _ = setup
    sids = [await session(store) for _ in range(3)]
    for sid in sids:
        await make_hot(kv, worker, sid, 80)  # ~80 KiB each against a 200 KiB budget
        await kv.park(sid, "unload")
    entries = await store.run(store.kv.entries)
    assert [e.session_id for e in entries] == sids[1:]
    files = sorted(p.name for p in kv.kv_dir.rglob("*.kv"))
    assert files == sorted(f"{s}.kv" for s in sids[1:])
    assert kv.hot[sids[0]].dirty, "an evicted session's state is no longer on disk"


async def test_a_displaced_session_reported_by_the_worker_is_indexed(setup: Any) -> None:
    kv, worker, store, _ = setup
    a, b = await session(store), await session(store)
    await make_hot(kv, worker, a, 20)
    plan = await kv.plan(b, "m")
    path = Path(plan.park_dir or "") / f"{a}.kv"
    size = write_kv_file(path, list(range(20)), bytes(100))
    await kv.settle(b, "m", plan, worker.pid, result(parked=[parked_at(a, path, size)]))
    assert a not in kv.hot and b in kv.hot
    (entry,) = await store.run(store.kv.entries, a)
    assert entry.path == str(path)
    assert (await kv.plan(a, "m")).fields().restore_from == str(path)


async def test_a_session_displaced_by_a_plain_request_is_indexed(setup: Any) -> None:
    kv, worker, store, _ = setup
    a = await session(store)
    await make_hot(kv, worker, a, 20)
    fields = await kv.plain_fields("m")
    assert fields == SlotFields(park_evicted_to=(await kv.plan(a, "m")).park_dir)
    path = Path(fields.park_evicted_to or "") / f"{a}.kv"
    size = write_kv_file(path, list(range(20)), bytes(100))
    await kv.plain_settled("m", fields, worker.pid, [parked_at(a, path, size)])
    assert a not in kv.hot
    assert (await kv.plan(a, "m")).fields().restore_from == str(path)
    await kv.plain_settled(
        "m", fields, worker.pid, [p.ParkReport(slot_key=a, error="disk full")]
    )  # logged only


async def test_a_restore_that_failed_drops_the_entry_and_its_file(setup: Any) -> None:
    kv, worker, store, seen = setup
    sid = await session(store)
    await make_hot(kv, worker, sid, 20)
    await kv.park(sid, "unload")
    plan = await kv.plan(sid, "m")
    assert plan.entry is not None
    report = await kv.settle(
        sid,
        "m",
        plan,
        worker.pid,
        result(restore=p.RestoreReport(restored=False, error="checksum mismatch")),
    )
    assert report.restored is False and "checksum" in (report.restore_error or "")
    assert report.timings() == {"kv_restored": False, "kv_restore_error": "checksum mismatch"}
    assert await store.run(store.kv.entries, sid) == []
    assert not Path(plan.entry.path).exists()
    ok = await kv.settle(
        sid,
        "m",
        plan,
        worker.pid,
        result(restore=p.RestoreReport(restored=True, n_tokens=20, bytes=5, ms=1.0)),
    )
    assert ok.restored is True and ok.timings()["kv_restored_tokens"] == 20
    assert any(e["type"] == "session.restored" for e in seen)


async def test_a_session_deleted_while_parking_leaves_no_file(setup: Any) -> None:
    kv, worker, store, _ = setup
    sid = await session(store)
    await make_hot(kv, worker, sid, 20)
    await store.run(store.sessions.delete, sid)
    await kv.park(sid, "idle")
    assert list(kv.kv_dir.rglob("*.kv")) == []


async def test_forget_deletes_files_and_start_removes_orphans(setup: Any, tmp_path: Path) -> None:
    kv, worker, store, _ = setup
    sid = await session(store)
    await make_hot(kv, worker, sid, 20)
    await kv.park(sid, "idle")
    (entry,) = await store.run(store.kv.entries, sid)
    orphan = kv.kv_dir / "0123456789abcdef" / "ses_gone.kv"
    orphan.parent.mkdir(parents=True)
    orphan.write_bytes(b"x")
    await kv.start()
    assert not orphan.exists() and Path(entry.path).exists()
    cleanup = await store.run(store.sessions.delete, sid)
    await kv.forget(cleanup.session_ids, cleanup.kv_paths)
    assert not Path(entry.path).exists() and sid not in kv.hot


async def test_idle_sessions_are_parked_after_a_while(tmp_path: Path) -> None:
    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF")
    worker = FakeWorker(pid=7)
    store = await Store.open(tmp_path / "state")
    now = [1000.0]
    kv = KvParking(
        store,
        FakeScheduler(FakeRunner(worker, model)),
        None,  # type: ignore[arg-type]
        kv_dir=tmp_path / "kv",
        budget_bytes=2**30,
        idle_s=30,
        clock=lambda: now[0],
    )
    await kv.start()
    try:
        sid = await session(store)
        await make_hot(kv, worker, sid, 10)
        kv.turn_started(sid)
        now[0] += 60
        assert await kv.park_idle() == [] and worker.saves == [], "never during a turn"
        kv.turn_ended(sid)  # idle from now on
        now[0] += 29.9
        assert await kv.park_idle() == [] and worker.saves == [], "not idle long enough yet"
        now[0] += 0.1
        assert await kv.park_idle() == [sid]
        assert worker.saves == [sid]
        assert kv.hot[sid].dirty is False
        now[0] += 60
        assert await kv.park_idle() == [], "a clean slot is not parked again"
        assert (await store.run(store.sessions.get, sid)).status != "parked", (
            "still hot in its slot"
        )
    finally:
        await kv.stop()
        await store.aclose()


def test_the_fingerprint_changes_with_the_file(tmp_path: Path) -> None:
    f = tmp_path / "m.gguf"
    f.write_bytes(b"GGUF" + bytes(100))
    first = model_fingerprint(f)
    assert model_fingerprint(f) == first
    f.write_bytes(b"GGUF" + bytes(99) + b"\x01")
    assert model_fingerprint(f) != first
