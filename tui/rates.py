"""Rates from cumulative counters: requests per second, tokens per second.

The daemon reports running totals (requests served, tokens generated); the console turns two
samples of a total into a rate. A counter that goes down (the daemon restarted) starts over
instead of giving a negative rate.
"""

from __future__ import annotations

from dataclasses import dataclass, field

TOKEN_COUNTERS = ("completion_tokens", "tokens_generated", "output_tokens", "tokens_out")
"""Names a daemon may give its generated-token counter, in order of preference."""


def generated_tokens(counters: dict[str, int]) -> int | None:
    for name in TOKEN_COUNTERS:
        if name in counters:
            return counters[name]
    return None


@dataclass
class RateMeter:
    """Per-key rates over the last two samples of each key's running total."""

    window_s: float = 60.0
    """Samples older than this are forgotten: a rate always describes the recent past."""
    _last: dict[str, tuple[float, float]] = field(default_factory=dict)
    _rates: dict[str, float] = field(default_factory=dict)

    def sample(self, key: str, now: float, total: float) -> float | None:
        previous = self._last.get(key)
        self._last[key] = (now, total)
        if previous is None:
            return self._rates.get(key)
        t0, v0 = previous
        dt = now - t0
        if total < v0 or dt > self.window_s:
            self._rates.pop(key, None)
            return None
        if dt <= 0:
            return self._rates.get(key)
        self._rates[key] = (total - v0) / dt
        return self._rates[key]

    def rate(self, key: str) -> float | None:
        return self._rates.get(key)
