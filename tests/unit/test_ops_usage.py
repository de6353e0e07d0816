"""Usage metering: merged request facts, resident time, energy shared by residency."""

from __future__ import annotations

import pytest

from appliance.telemetry.usage import (
    EnergyMeter,
    ResidencyMeter,
    UsageMeter,
    UsageRecord,
    share_energy,
)


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_residency_accrues_while_loaded_and_is_cut_at_each_drain() -> None:
    clock = Clock()
    r = ResidencyMeter(clock)
    r.resident("a")
    clock.t += 10
    r.resident("b")
    r.resident("a")  # a second "ready" does not restart the interval
    clock.t += 5
    r.gone("a")
    clock.t += 5
    assert r.drain() == {"a": 15.0, "b": 10.0}
    clock.t += 3
    assert r.drain() == {"b": 3.0}, "b is still loaded; a is not counted again"
    r.gone("b")
    r.gone("never-loaded")
    assert r.drain() == {}


def test_energy_is_the_counter_difference_and_survives_a_reset() -> None:
    e = EnergyMeter()
    assert e.delta(1000.0) == 0.0, "the first reading is the baseline"
    assert e.delta(1250.5) == 250.5
    assert e.delta(None) == 0.0
    assert e.delta(10.0) == 0.0, "the counter went back (driver reload): no negative energy"
    assert e.delta(15.0) == 5.0


def test_energy_is_shared_by_resident_seconds() -> None:
    assert share_energy(300.0, {"a": 20.0, "b": 10.0}) == {"a": 200.0, "b": 100.0}
    assert share_energy(50.0, {}) == {None: 50.0}, "an idle box's energy is kept, with no model"
    assert share_energy(0.0, {"a": 1.0}) == {}


def test_meter_merges_facts_per_key_and_adds_residency_and_energy() -> None:
    clock = Clock()
    m = UsageMeter(clock=clock, wall=lambda: 1_700_000_000.0)
    m.residency.resident("tiny")
    m.add(
        UsageRecord(
            model="tiny", session_id="s1", tokens_in=10, tokens_out=5, requests=1, busy_seconds=0.5
        )
    )
    m.add(
        UsageRecord(
            model="tiny", session_id="s1", tokens_in=7, tokens_out=3, requests=1, busy_seconds=0.25
        )
    )
    m.add(UsageRecord(model="tiny", tokens_in=1, requests=1))
    m.add(UsageRecord(agent="coder", session_id="s1", sandbox_cpu_s=1.5))
    m.energy.delta(5000.0)
    clock.t += 60
    facts = m.collect(energy_reading=5600.0)
    by_key = {(f.model, f.agent, f.session_id, f.gpu_seconds > 0, f.energy_j > 0): f for f in facts}
    s1 = by_key[("tiny", None, "s1", False, False)]
    assert (s1.tokens_in, s1.tokens_out, s1.requests, s1.busy_seconds) == (17, 8, 2, 0.75)
    assert by_key[("tiny", None, None, False, False)].tokens_in == 1
    assert by_key[(None, "coder", "s1", False, False)].sandbox_cpu_s == 1.5
    assert by_key[("tiny", None, None, True, False)].gpu_seconds == 60.0
    assert by_key[("tiny", None, None, False, True)].energy_j == pytest.approx(600.0)
    assert all(f.ts == 1_700_000_000.0 for f in facts)
    assert m.collect(energy_reading=5600.0) == [], "nothing new: residency of 0 s is left out"


def test_meter_is_bounded() -> None:
    m = UsageMeter()
    m.MAX_KEYS = 3
    for i in range(5):
        m.add(UsageRecord(session_id=f"s{i}", requests=1))
    m.add(UsageRecord(session_id="s0", requests=1))  # an existing key still merges
    assert m.dropped == 2
    facts = m.collect()
    assert sorted((f.session_id, f.requests) for f in facts) == [("s0", 2), ("s1", 1), ("s2", 1)]


def test_since_accepts_unix_seconds_iso_times_and_ages() -> None:
    from appliance.errors import InvalidRequest
    from appliance.operations import parse_since

    now = 1_700_000_000.0
    assert parse_since(None, now) is None and parse_since("", now) is None
    assert parse_since("1699990000.5", now) == 1699990000.5
    assert parse_since("90s", now) == now - 90
    assert parse_since("24h", now) == now - 86400
    assert parse_since("7d", now) == now - 7 * 86400
    assert parse_since("2023-11-14T22:13:20Z", now) == 1_700_000_000.0
    assert parse_since("2023-11-14T22:13:20", now) == 1_700_000_000.0, "no zone means UTC"
    with pytest.raises(InvalidRequest, match="15m, 24h or 7d"):
        parse_since("yesterday", now)
