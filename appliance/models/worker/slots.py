"""Which sequence a request runs in, and what its KV cells hold before it starts.

Sessions outlive sequences. When a request takes a sequence bound to another session (for a
session of its own, or without one when every free sequence is bound), that session's state
(prompt-evaluated tokens only) is parked: into the RAM tier when it fits there, else (and for
whatever the RAM tier pushes out) into the request's `park_evicted_to` directory, which the daemon
indexes. A request may bring its session's parked file (`restore_from`); the RAM tier is looked at
first. A parked state is loaded only when the sequence no longer holds the session and the state's
tokens are mostly a prefix of the prompt. A file that is damaged, hashes differently than the
daemon indexed, or covers another prefix is reported and skipped: the prompt is then evaluated in
full, never answered from a wrong state.
"""

from __future__ import annotations

import os
import re
import time
from typing import Literal

from appliance.models.worker import protocol as p
from appliance.models.worker.jobs import GenJob, Seq, common_prefix
from appliance.models.worker.kvfile import (
    map_kv_file,
    read_kv_file,
    token_prefix_hash,
    write_kv_file,
)
from appliance.models.worker.kvstate import ParkedState, RamTier, load_seq, save_seq
from appliance.models.worker.model import Model

_FILE_SAFE_KEY = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")
SHARE_MIN_UNIFIED = 8
"""Tokens another sequence must share beyond a sequence's own before its cells are copied, with
a unified KV cache (a copy only tags cells)."""
SHARE_MIN_SPLIT = 64
"""The same with a KV stream per sequence, where a copy duplicates the whole stream."""


class SlotKeeper:
    def __init__(self, model: Model, seqs: list[Seq], ram: RamTier) -> None:
        self.model = model
        self.seqs = seqs
        self.ram = ram
        self.prompt_evaluated = 0
        self.prompt_reused = 0
        self.prompt_shared = 0

    # --- choosing ---------------------------------------------------------------------------

    def choose(self, key: str | None, prompt: list[int] | None) -> Seq | None:
        free = [s for s in self.seqs if s.job is None]
        if key is not None:
            bound = [s for s in self.seqs if s.key == key]
            if bound:
                return bound[0] if bound[0].job is None else None
            if not free:
                return None
            # prefer a sequence no session owns, then the least recently used one
            return min(free, key=lambda s: (s.key is not None, s.last_used))
        if not free:
            return None
        toks = prompt or []
        return max(free, key=lambda s: (s.key is None, common_prefix(s.tokens, toks), -s.last_used))

    # --- before a request runs ----------------------------------------------------------------

    def prepare(self, job: GenJob, seq: Seq) -> None:
        cmd = job.cmd
        key = cmd.slot_key
        old = seq.key if seq.key != key else None
        rebound = key is not None and seq.key != key
        seq.job = job
        job.seq = seq
        if key is not None or old:
            self.drop_generated(seq)
        if old and seq.tokens:
            job.parked = self._park(old, seq, cmd.park_evicted_to)
        seq.key = key
        if rebound:
            job.restore = self._restore_for_prompt(seq, key, cmd, job.prompt)
        prompt = job.prompt
        n_keep = common_prefix(seq.tokens, prompt)
        own = n_keep
        src, n_src = self._best_source(seq, prompt, n_keep)
        if src is not None:
            self._copy_prefix(src, seq, n_src)
            n_keep = n_src
            job.shared = n_src - own
            self.prompt_shared += job.shared
        n_keep = min(n_keep, len(prompt) - 1)  # the last prompt token is evaluated for its logits
        if len(seq.tokens) > n_keep:
            self.model.seq_rm(seq.id, n_keep, -1)
            del seq.tokens[n_keep:]
        job.cached = n_keep
        self.prompt_reused += n_keep
        job.pending = list(prompt[n_keep:])
        seq.clean_len = len(prompt)

    def _best_source(self, seq: Seq, prompt: list[int], have: int) -> tuple[Seq | None, int]:
        if not self.model.mem:
            return None, have
        least = SHARE_MIN_UNIFIED if self.model.layout.unified else SHARE_MIN_SPLIT
        best: Seq | None = None
        best_n = have
        for other in self.seqs:
            if other is seq:
                continue
            n = common_prefix(other.tokens, prompt)
            if n > best_n:
                best, best_n = other, n
        if best is None or best_n - have < least:
            return None, have
        return best, best_n

    def _copy_prefix(self, src: Seq, dst: Seq, n: int) -> None:
        m = self.model
        m.seq_rm(dst.id, -1, -1)
        if m.layout.unified:
            m.seq_cp(src.id, dst.id, 0, n)
        else:  # a stream per sequence: llama.cpp copies whole streams only
            m.seq_cp(src.id, dst.id, -1, -1)
            m.seq_rm(dst.id, n, -1)
        dst.tokens = list(src.tokens[:n])

    def drop_generated(self, seq: Seq) -> None:
        """Forget the tokens generated after the sequence's last prompt.

        Generated tokens are evaluated one at a time, and llama.cpp does not always compute a
        token alone bit for bit as it does in a batch. Without them, a session's cache (hot, or
        parked and restored) holds exactly what a full prefill of the same tokens computes, so a
        resumed session answers as a fresh one would; its next prompt evaluates them again, in a
        batch with the new message."""
        n = seq.clean_len
        if n is not None and len(seq.tokens) > n:
            self.model.seq_rm(seq.id, n, -1)
            del seq.tokens[n:]

    def empty(self, seq: Seq) -> None:
        self.model.seq_rm(seq.id, -1, -1)
        seq.tokens = []
        seq.clean_len = None

    # --- parking ----------------------------------------------------------------------------

    def _park(self, key: str, seq: Seq, park_dir: str | None) -> list[p.ParkReport]:
        try:
            state = ParkedState(tokens=list(seq.tokens), data=save_seq(self.model.ctx, seq.id))
        except Exception as exc:
            return [p.ParkReport(slot_key=key, error=f"saving KV state failed: {exc}")]
        reports: list[p.ParkReport] = []
        spill = self.ram.put(key, state)
        if key in self.ram:
            reports.append(p.ParkReport(slot_key=key, tier="ram", state=_saved(state)))
        for spilled_key, spilled in spill:
            # without a directory (or a key that is no file name) the state is dropped: that
            # session's next turn prefills
            if park_dir and _FILE_SAFE_KEY.match(spilled_key):
                reports.append(self._to_disk(spilled_key, spilled, park_dir))
        return reports

    def _to_disk(self, key: str, state: ParkedState, park_dir: str) -> p.ParkReport:
        path = os.path.join(park_dir, f"{key}.kv")
        try:
            nbytes = write_kv_file(path, state.tokens, state.data)
        except Exception as exc:
            return p.ParkReport(slot_key=key, error=f"saving KV state failed: {exc}")
        return p.ParkReport(
            slot_key=key,
            path=path,
            state=p.SavedState(
                bytes=nbytes, n_tokens=len(state.tokens), prefix_hash=state.prefix_hash
            ),
        )

    def _restore_for_prompt(
        self, seq: Seq, key: str | None, cmd: p.Generate, prompt: list[int]
    ) -> p.RestoreReport | None:
        t = time.perf_counter()
        ram = self.ram.take(key) if key is not None else None
        tier: Literal["disk", "ram"] = "ram"
        data: bytearray | memoryview
        if ram is not None:
            saved, data = ram.tokens, ram.data
        elif cmd.restore_from:
            tier = "disk"
            try:
                saved, data = map_kv_file(cmd.restore_from)
            except (OSError, ValueError) as exc:
                return p.RestoreReport(
                    restored=False, error=f"the parked state cannot be used: {exc}"
                )
            if (
                cmd.restore_prefix_hash is not None
                and token_prefix_hash(saved) != cmd.restore_prefix_hash
            ):
                # not damage: the file was parked again after the daemon looked its entry up
                return p.RestoreReport(
                    restored=False,
                    reason="the parked state covers other tokens than its index entry",
                )
        else:
            return None
        shared = common_prefix(saved, prompt)
        held = common_prefix(seq.tokens, prompt)
        if shared <= held or 2 * shared < len(saved) or len(saved) > self.model.n_ctx_seq:
            if ram is not None and key is not None:
                self.ram.put(key, ram)  # intact, for another prompt: it stays parked
            return p.RestoreReport(
                restored=False,
                tier=tier,
                n_tokens=len(saved),
                shared_tokens=shared,
                reason="the parked state covers a different prompt prefix",
            )
        try:
            load_seq(self.model.ctx, self.model.mem, seq.id, data)
        except Exception as exc:
            self.empty(seq)
            return p.RestoreReport(
                restored=False, tier=tier, error=f"restoring KV state failed: {exc}"
            )
        seq.tokens = list(saved)
        return p.RestoreReport(
            restored=True,
            tier=tier,
            n_tokens=len(saved),
            shared_tokens=shared,
            bytes=len(data),
            ms=(time.perf_counter() - t) * 1000.0,
        )

    # --- commands ---------------------------------------------------------------------------

    def bound(self, key: str) -> Seq | None:
        return next((s for s in self.seqs if s.key == key), None)

    def save(self, key: str, path: str) -> p.SavedState | None:
        """Write the session's state (its sequence's, else the RAM tier's) to `path`."""
        seq = self.bound(key)
        if seq is not None and seq.tokens:
            self.drop_generated(seq)
            state = ParkedState(tokens=list(seq.tokens), data=save_seq(self.model.ctx, seq.id))
        else:
            ram = self.ram.get(key)
            if ram is None:
                return None
            state = ram
        nbytes = write_kv_file(path, state.tokens, state.data)
        return p.SavedState(bytes=nbytes, n_tokens=len(state.tokens), prefix_hash=state.prefix_hash)

    def restore(self, key: str, path: str) -> p.RestoreReport:
        """Load a parked file into a sequence for `key` (RestoreSlot)."""
        seq = self.choose(key, None)
        if seq is None:
            raise RuntimeError("every sequence is busy")
        t = time.perf_counter()
        tokens, data = read_kv_file(path)
        if len(tokens) > self.model.n_ctx_seq:
            raise ValueError("the state holds more tokens than a sequence's context")
        self.ram.drop(key)
        seq.key = key
        try:
            load_seq(self.model.ctx, self.model.mem, seq.id, data)
        except Exception:
            self.empty(seq)
            raise
        seq.tokens = list(tokens)
        seq.clean_len = len(tokens)
        return p.RestoreReport(
            restored=True,
            tier="disk",
            n_tokens=len(tokens),
            bytes=len(data),
            ms=(time.perf_counter() - t) * 1000.0,
        )

    def close(self) -> None:
        self.ram.drain()


def _saved(state: ParkedState) -> p.SavedState:
    return p.SavedState(
        bytes=state.nbytes, n_tokens=len(state.tokens), prefix_hash=state.prefix_hash
    )
