"""Operations tables: API tokens (hashed), traces with spans and retention, the usage ledger."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.errors import Conflict, InvalidRequest, NotFound
from appliance.store import Span, Store, Trace, UsageRecord, new_trace_id


class FakeClock:
    def __init__(self) -> None:
        self.now = 10_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store(tmp_path: Path, clock: FakeClock) -> Iterator[Store]:
    with Store(tmp_path, clock=clock) as s:
        yield s


# --- tokens ----------------------------------------------------------------------------------


def test_tokens_are_shown_once_and_stored_hashed(store: Store) -> None:
    new = store.tokens.create("edge-ci")
    assert new.plain.startswith("apl_") and new.plain.startswith(new.token.prefix)
    rows = list(store.db.connection().execute("SELECT hash FROM api_tokens"))
    assert rows == [(hashlib.sha256(new.plain.encode()).hexdigest(),)]
    dump = b"".join(
        p.read_bytes() for p in store.state_dir.iterdir() if p.name.startswith("appliance.db")
    )
    assert new.plain.encode() not in dump
    assert [t.name for t in store.tokens.list()] == ["edge-ci"]


def test_verify_accepts_valid_tokens_only(store: Store, clock: FakeClock) -> None:
    new = store.tokens.create("a")
    ok = store.tokens.verify(new.plain)
    assert ok is not None and ok.id == new.token.id and ok.last_used == clock.now
    assert store.tokens.verify(new.plain[:-1] + ("A" if new.plain[-1] != "A" else "B")) is None
    assert store.tokens.verify("") is None and store.tokens.verify("Bearer x") is None
    clock.now += 5
    assert store.tokens.verify(new.plain).last_used == clock.now - 5  # type: ignore[union-attr]
    clock.now += 120
    assert store.tokens.verify(new.plain).last_used == clock.now  # type: ignore[union-attr]


def test_revoked_tokens_stop_verifying_and_free_the_name(store: Store) -> None:
    new = store.tokens.create("a")
    with pytest.raises(Conflict):
        store.tokens.create("a")
    assert store.tokens.count_valid() == 1
    revoked = store.tokens.revoke("a")
    assert revoked.revoked is not None
    assert store.tokens.verify(new.plain) is None
    assert store.tokens.count_valid() == 0
    replacement = store.tokens.create("a")  # the name is free again
    assert store.tokens.verify(replacement.plain) is not None
    assert [t.revoked is None for t in store.tokens.list()] == [False, True]
    assert len(store.tokens.list(include_revoked=False)) == 1
    assert store.tokens.revoke(new.token.id).revoked == revoked.revoked  # idempotent by id
    with pytest.raises(NotFound):
        store.tokens.revoke("nope")
    with pytest.raises(InvalidRequest):
        store.tokens.create("has space")


# --- traces ----------------------------------------------------------------------------------


def make_trace(started: float, *, model: str = "smollm2", kind: str = "chat") -> Trace:
    return Trace(
        id=new_trace_id(),
        kind=kind,
        name="POST /v1/chat/completions",
        started=started,
        duration_ms=120.0,
        model=model,
        session_id="ses_1",
        agent="coder",
        attrs={"tokens_out": 12},
        spans=[
            Span(id="root", name="request", start_ms=0.0, duration_ms=120.0),
            Span(id="q", parent="root", name="queue_wait", start_ms=0.5, duration_ms=3.0),
            Span(
                id="d",
                parent="root",
                name="decode",
                start_ms=40.0,
                duration_ms=80.0,
                attrs={"tokens": 12},
            ),
        ],
    )


def test_trace_round_trips_with_its_spans(store: Store) -> None:
    t = make_trace(500.0)
    store.traces.insert(t)
    assert store.traces.get(t.id) == t
    with pytest.raises(InvalidRequest, match="already stored"):
        store.traces.insert(t)
    with pytest.raises(NotFound, match="retention"):
        store.traces.get("trc_missing")
    dup = make_trace(501.0)
    dup.spans.append(Span(id="q", name="again", start_ms=1, duration_ms=1))
    with pytest.raises(InvalidRequest, match="duplicate"):
        store.traces.insert(dup)


def test_recent_traces_filter_and_order(store: Store) -> None:
    for i, (model, kind) in enumerate([("a", "chat"), ("b", "chat"), ("a", "turn"), ("a", "chat")]):
        store.traces.insert(make_trace(100.0 + i, model=model, kind=kind))
    recent = store.traces.recent(model="a", kind="chat")
    assert [t.started for t in recent] == [103.0, 100.0] and recent[0].spans == []
    assert [t.started for t in store.traces.recent(limit=2)] == [103.0, 102.0]
    assert [t.started for t in store.traces.recent(since=102.0)] == [103.0, 102.0]


def test_retention_keeps_the_newest_and_drops_their_spans(store: Store) -> None:
    traces = [make_trace(100.0 + i) for i in range(5)]
    for t in traces:
        store.traces.insert(t)
    assert store.traces.prune(keep=3) == 2
    assert [t.started for t in store.traces.recent()] == [104.0, 103.0, 102.0]
    assert list(store.db.connection().execute("SELECT count(*) FROM spans")) == [(3 * 3,)]
    assert store.traces.prune(keep=10, older_than=104.0) == 2
    assert [t.id for t in store.traces.recent()] == [traces[4].id]


# --- usage -----------------------------------------------------------------------------------


def test_usage_aggregates_by_model_agent_and_session(store: Store, clock: FakeClock) -> None:
    store.usage.record(
        UsageRecord(
            ts=10.0,
            model="a",
            agent="coder",
            session_id="s1",
            tokens_in=100,
            tokens_out=20,
            requests=1,
            busy_seconds=0.5,
            gpu_seconds=2.0,
        ),
        UsageRecord(
            ts=20.0,
            model="a",
            agent="assistant",
            session_id="s2",
            tokens_in=50,
            tokens_out=5,
            requests=1,
        ),
        UsageRecord(
            ts=30.0,
            model="b",
            agent="coder",
            session_id="s1",
            tokens_in=7,
            tokens_out=3,
            requests=1,
            energy_j=12.5,
        ),
        UsageRecord(ts=40.0, agent="coder", session_id="s1", sandbox_cpu_s=0.75),
    )
    by_model = {t.key: t for t in store.usage.aggregate("model")}
    assert set(by_model) == {None, "a", "b"}
    assert (by_model["a"].tokens_in, by_model["a"].tokens_out, by_model["a"].requests) == (
        150,
        25,
        2,
    )
    assert by_model["a"].gpu_seconds == 2.0 and by_model["b"].energy_j == 12.5
    assert by_model[None].sandbox_cpu_s == 0.75

    by_agent = {t.key: t.tokens_in for t in store.usage.aggregate("agent", since=15.0)}
    assert by_agent == {"assistant": 50, "coder": 7}
    by_session = {t.key: t.requests for t in store.usage.aggregate("session", until=30.0)}
    assert by_session == {"s1": 1, "s2": 1}
    assert store.usage.total().tokens_in == 157
    with pytest.raises(InvalidRequest, match="grouped by"):
        store.usage.aggregate("gpu")  # type: ignore[arg-type]

    store.usage.record(UsageRecord(requests=1))  # ts defaults to the clock
    assert store.usage.total(since=clock.now).requests == 1
    assert store.usage.prune(older_than=25.0) == 2
    with pytest.raises(InvalidRequest):
        store.usage.record(UsageRecord(tokens_in=-1))
