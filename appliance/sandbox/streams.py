"""Collecting a sandbox's output: capped buffers, and per-cell splitting for REPL sandboxes.

Output is capped per stream (default 1 MiB): bytes beyond the cap are counted and dropped, and the
result is flagged as truncated. A program that keeps writing far beyond the cap is killed by the
runner (the count is how it knows), so endless output costs neither memory nor CPU for long.

A stateful sandbox's stdout and stderr are long-lived pipes shared by every cell. After a cell, the
REPL driver writes a marker that is new for every cell (the daemon chooses it) to both streams;
`MarkerSplitter` cuts the streams at those markers, so each cell gets exactly its own output,
even when a marker arrives split across reads.
"""

from __future__ import annotations

from dataclasses import dataclass


class CappedBuffer:
    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.data = bytearray()
        self.total = 0

    def feed(self, chunk: bytes) -> None:
        self.total += len(chunk)
        room = self.cap - len(self.data)
        if room > 0:
            self.data += chunk[:room]

    @property
    def truncated(self) -> bool:
        return self.total > self.cap

    def take(self) -> tuple[bytes, bool]:
        return bytes(self.data), self.truncated


@dataclass
class Segment:
    data: bytes
    truncated: bool


class MarkerSplitter:
    """Splits one stream into segments that each end with the current marker."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self._current = CappedBuffer(cap)
        self._marker: bytes | None = None
        self._window = bytearray()  # bytes that might be the start of the marker
        self.done: Segment | None = None

    @property
    def pending_bytes(self) -> int:
        """Bytes of the segment being collected so far, dropped ones included."""
        return self._current.total + len(self._window)

    def expect(self, marker: bytes) -> None:
        """Start waiting for `marker`; output so far belongs to the coming cell."""
        self._marker = marker
        self.done = None
        self._scan(b"")

    def feed(self, chunk: bytes) -> None:
        self._scan(chunk)

    def _scan(self, chunk: bytes) -> None:
        marker = self._marker
        if marker is None:
            if self._window:
                self._current.feed(bytes(self._window))
                self._window.clear()
            self._current.feed(chunk)
            return
        buf = bytes(self._window) + chunk
        self._window.clear()
        idx = buf.find(marker)
        if idx >= 0:
            self._current.feed(buf[:idx])
            data, truncated = self._current.take()
            self.done = Segment(data, truncated)
            self._current = CappedBuffer(self.cap)
            self._marker = None
            self._current.feed(buf[idx + len(marker) :])
            return
        keep = len(marker) - 1
        # keep only a tail that could still be a prefix of the marker
        cut = len(buf)
        for k in range(min(keep, len(buf)), 0, -1):
            if marker.startswith(buf[-k:]):
                cut = len(buf) - k
                break
        self._current.feed(buf[:cut])
        self._window += buf[cut:]

    def drain_unmarked(self) -> Segment:
        """Whatever arrived without a marker (the driver died mid-cell)."""
        self._current.feed(bytes(self._window))
        self._window.clear()
        data, truncated = self._current.take()
        self._current = CappedBuffer(self.cap)
        self._marker = None
        return Segment(data, truncated)
