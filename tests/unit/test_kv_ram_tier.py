"""The RAM tier of parked KV states: a byte budget, least recently parked out first."""

from __future__ import annotations

from appliance.models.worker.kvstate import ParkedState, RamTier


def state(n: int) -> ParkedState:
    return ParkedState(tokens=list(range(n)), data=bytearray(n))


def test_states_beyond_the_budget_spill_oldest_first() -> None:
    tier = RamTier(100)
    assert tier.put("a", state(40)) == []
    assert tier.put("b", state(40)) == []
    spilled = tier.put("c", state(40))
    assert [k for k, _ in spilled] == ["a"] and tier.bytes == 80
    assert "a" not in tier and tier.keys() == ["b", "c"]
    assert tier.spilled == 1


def test_a_state_over_the_whole_budget_goes_straight_to_disk() -> None:
    tier = RamTier(10)
    (only,) = tier.put("big", state(11))
    assert only[0] == "big" and len(tier) == 0 and tier.bytes == 0
    assert RamTier(0).put("x", state(1))[0][0] == "x", "a zero budget keeps nothing"


def test_take_removes_and_counts_a_hit_and_parking_again_replaces() -> None:
    tier = RamTier(100)
    tier.put("a", state(30))
    tier.put("a", state(50))
    assert tier.bytes == 50 and len(tier) == 1
    got = tier.take("a")
    assert got is not None and got.nbytes == 50 and tier.hits == 1 and tier.bytes == 0
    assert tier.take("a") is None
    tier.put("b", state(5))
    assert [k for k, _ in tier.drain()] == ["b"] and tier.bytes == 0
