"""The index of parked KV state: park/replace, lookup, LRU eviction under a disk budget."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.errors import NotFound
from appliance.store import Store


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        self.now += 1.0  # every call is a new instant, so LRU order is the call order
        return self.now


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store(tmp_path, clock=FakeClock()) as s:
        yield s


def park(store: Store, session_id: str, name: str, size: int, fingerprint: str = "fp") -> str:
    return store.kv.park(
        session_id,
        model_fingerprint=fingerprint,
        prefix_hash=f"h-{name}",
        n_tokens=size // 10,
        bytes=size,
        path=f"/kv/{name}.state",
    ).entry.id


def test_parking_again_replaces_and_names_the_old_file(store: Store) -> None:
    s = store.sessions.create(None, model="m")
    park(store, s.id, "v1", 100)
    again = store.kv.park(
        s.id, model_fingerprint="fp", prefix_hash="h2", n_tokens=20, bytes=200, path="/kv/v2.state"
    )
    assert again.replaced_path == "/kv/v1.state"
    entry = store.kv.lookup(s.id, "fp")
    assert entry is not None and entry.prefix_hash == "h2" and entry.path == "/kv/v2.state"
    assert store.kv.lookup(s.id, "other-model") is None
    park(store, s.id, "other", 50, fingerprint="fp-other")
    assert store.kv.total_bytes() == 250
    with pytest.raises(NotFound):
        park(store, "ses_missing", "x", 1)


def test_eviction_takes_least_recently_used_until_the_rest_fits(store: Store) -> None:
    sessions = [store.sessions.create(None, model="m").id for _ in range(4)]
    ids = [park(store, sid, f"s{i}", 100) for i, sid in enumerate(sessions)]
    store.kv.touch(ids[0])  # s0 becomes the most recently used

    assert store.kv.eviction_candidates(400) == []
    assert [e.path for e in store.kv.eviction_candidates(350)] == ["/kv/s1.state"]
    # Room for 150 incoming bytes in a 400 budget: two must go.
    planned = store.kv.eviction_candidates(400, incoming_bytes=150)
    assert [e.path for e in planned] == ["/kv/s1.state", "/kv/s2.state"]

    evicted = store.kv.evict_over_budget(400, incoming_bytes=150)
    assert evicted == planned
    assert store.kv.total_bytes() == 200
    assert [e.path for e in store.kv.entries()] == ["/kv/s3.state", "/kv/s0.state"]
    # A budget smaller than anything evicts everything.
    assert len(store.kv.evict_over_budget(0)) == 2 and store.kv.entries() == []


def test_remove_returns_the_path_once(store: Store) -> None:
    s = store.sessions.create(None, model="m")
    entry_id = park(store, s.id, "bad", 10)
    assert store.kv.remove(entry_id) == "/kv/bad.state"
    assert store.kv.remove(entry_id) is None
