"""A real model worker parks the state of a slot it gives away and restores a session's parked state.

The worker runs the tiny llama GGUF with one slot, so every new key displaces the previous one.
Answers are compared at temperature 0 with a run that evaluated the whole prompt: a restored state
must never change what the model says, and a damaged, mismatched or unrelated file must be
reported and skipped.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from appliance.errors import InvalidRequest
from appliance.models.worker import protocol as p
from appliance.models.worker.kvfile import (
    map_kv_file,
    read_kv_file,
    token_prefix_hash,
    write_kv_file,
)
from appliance.models.worker.process import ProcessSpawner, WorkerProcess

HISTORY = "The lighthouse keeper wrote in the log every night. " * 8


@pytest.fixture
async def worker(tiny_model_path: Path) -> AsyncIterator[WorkerProcess]:
    w = await ProcessSpawner().spawn()
    await w.load(
        p.Load(model_path=str(tiny_model_path), n_ctx=512, n_threads=1, parallel=1), timeout=60
    )
    try:
        yield w
    finally:
        await w.close()


async def complete(w: WorkerProcess, prompt: str, key: str | None, **kv: Any) -> p.GenerateResult:
    params = p.GenerateParams(prompt=prompt, max_tokens=12, temperature=0.0, seed=1)
    return await w.call(
        lambda i: p.Generate(id=i, op="completion", params=params, slot_key=key, **kv),
        p.GenerateResult,
    )


async def full_prefill(w: WorkerProcess, prompt: str) -> p.GenerateResult:
    """The answer when the whole prompt is evaluated (the one slot first holds something else)."""
    await complete(w, "Unrelated words.", "ses_flush")
    out = await complete(w, prompt, "ses_fresh")
    assert out.usage.cached_tokens <= 2  # BOS (and a leading space) at most
    return out


def saved(report: p.ParkReport) -> tuple[str, p.SavedState]:
    """The path and state of a displaced session that was parked."""
    assert report.path is not None and report.state is not None, report.error
    return report.path, report.state


async def test_a_displaced_session_is_parked_then_restored_with_the_same_answer(
    worker: WorkerProcess, tmp_path: Path
) -> None:
    first = await complete(worker, HISTORY, "ses_a")
    assert first.parked == [] and first.restore is None

    other = await complete(
        worker, "Something else entirely.", "ses_b", park_evicted_to=str(tmp_path)
    )
    (parked,) = other.parked
    path, state = saved(parked)
    assert parked.slot_key == "ses_a" and path == str(tmp_path / "ses_a.kv")
    tokens, _ = read_kv_file(path)
    assert state.n_tokens == len(tokens) > 20
    assert state.prefix_hash == token_prefix_hash(tokens)

    follow_up = HISTORY + first.text + " Then"
    restored = await complete(
        worker,
        follow_up,
        "ses_a",
        park_evicted_to=str(tmp_path),
        restore_from=path,
        restore_prefix_hash=state.prefix_hash,
    )
    assert restored.restore is not None and restored.restore.restored is True
    assert restored.usage.cached_tokens >= restored.restore.shared_tokens - 1 > 20
    assert restored.parked[0].slot_key == "ses_b"  # ses_b made room in turn

    assert restored.text == (await full_prefill(worker, follow_up)).text


async def test_a_request_without_a_session_parks_the_session_it_displaces(
    worker: WorkerProcess, tmp_path: Path
) -> None:
    first = await complete(worker, HISTORY, "ses_a")
    plain = await complete(
        worker, "A request with no session.", None, park_evicted_to=str(tmp_path)
    )
    (parked,) = plain.parked
    path, state = saved(parked)
    assert parked.slot_key == "ses_a" and Path(path).exists()
    again = await complete(worker, "Another one.", None, park_evicted_to=str(tmp_path))
    assert again.parked == [], "the slot belongs to no session any more"

    follow_up = HISTORY + first.text + " Then"
    restored = await complete(
        worker,
        follow_up,
        "ses_a",
        restore_from=path,
        restore_prefix_hash=state.prefix_hash,
    )
    assert restored.restore is not None and restored.restore.restored is True
    assert restored.text == (await full_prefill(worker, follow_up)).text


async def test_a_hot_slot_is_not_restored_from_disk(worker: WorkerProcess, tmp_path: Path) -> None:
    await complete(worker, HISTORY, "ses_a")
    await complete(worker, "Other.", "ses_b", park_evicted_to=str(tmp_path))
    back = await complete(worker, HISTORY, "ses_a", restore_from=str(tmp_path / "ses_a.kv"))
    assert back.restore is not None and back.restore.restored is True
    again = await complete(
        worker, HISTORY + " More", "ses_a", restore_from=str(tmp_path / "ses_a.kv")
    )
    assert again.restore is None, "the slot still holds the session: nothing is read from disk"
    assert again.usage.cached_tokens > 20


@pytest.mark.parametrize("damage", ["flip", "truncate", "missing", "hash"])
async def test_a_bad_parked_file_falls_back_to_a_full_prefill(
    worker: WorkerProcess, tmp_path: Path, damage: str
) -> None:
    await complete(worker, HISTORY, "ses_a")
    parked = (await complete(worker, "Other.", "ses_b", park_evicted_to=str(tmp_path))).parked[0]
    where, state = saved(parked)
    path = Path(where)
    data = bytearray(path.read_bytes())
    expect = state.prefix_hash
    if damage == "flip":
        data[-100] ^= 0xFF
        path.write_bytes(bytes(data))
    elif damage == "truncate":
        path.write_bytes(bytes(data[: len(data) // 2]))
    elif damage == "missing":
        path.unlink()
    else:
        expect = token_prefix_hash([1, 2, 3])
    out = await complete(
        worker, HISTORY, "ses_a", restore_from=str(path), restore_prefix_hash=expect
    )
    assert out.restore is not None and out.restore.restored is False
    # damage is an error (the daemon drops the file); a hash mismatch only means "not this one"
    assert out.restore.reason if damage == "hash" else out.restore.error
    assert out.usage.cached_tokens <= 2
    assert out.text == (await full_prefill(worker, HISTORY)).text


async def test_a_parked_state_of_another_prefix_is_skipped(
    worker: WorkerProcess, tmp_path: Path
) -> None:
    await complete(worker, HISTORY, "ses_a")
    parked = (await complete(worker, "Other.", "ses_b", park_evicted_to=str(tmp_path))).parked[0]
    path, state = saved(parked)
    changed = "A different opening. " + HISTORY
    out = await complete(
        worker,
        changed,
        "ses_a",
        restore_from=path,
        restore_prefix_hash=state.prefix_hash,
    )
    assert out.restore is not None and out.restore.restored is False
    assert "different prompt prefix" in (out.restore.reason or "")
    assert out.text == (await full_prefill(worker, changed)).text


async def test_without_a_park_directory_a_displaced_slot_is_dropped(
    worker: WorkerProcess, tmp_path: Path
) -> None:
    await complete(worker, HISTORY, "ses_a")
    out = await complete(worker, "Other.", "ses_b")
    assert out.parked == []
    assert list(tmp_path.iterdir()) == []


async def test_save_slot_reports_the_prefix_hash(worker: WorkerProcess, tmp_path: Path) -> None:
    await complete(worker, HISTORY, "ses_a")
    r = await worker.call(
        lambda i: p.SaveSlot(id=i, slot_key="ses_a", path=str(tmp_path / "a.kv")), p.SaveResult
    )
    tokens, _ = read_kv_file(tmp_path / "a.kv")
    assert r.state is not None and r.state.prefix_hash == token_prefix_hash(tokens)
    none = await worker.call(
        lambda i: p.SaveSlot(id=i, slot_key="ses_zzz", path=str(tmp_path / "z.kv")), p.SaveResult
    )
    assert none.state is None and not (tmp_path / "z.kv").exists()


async def test_a_prompt_beyond_the_context_is_a_context_length_error(worker: WorkerProcess) -> None:
    with pytest.raises(InvalidRequest) as err:
        await complete(worker, "lighthouse " * 600, "ses_a")
    assert err.value.code == "context_length_exceeded"


def test_a_mapped_kv_file_reads_as_the_plain_one(tmp_path: Path) -> None:
    path = tmp_path / "s.kv"
    write_kv_file(path, [5, 6, 7], bytes(range(256)) * 40)
    tokens, state = map_kv_file(path)
    assert (tokens, bytes(state)) == read_kv_file(path)
    assert not state.readonly, "llama.cpp reads it in place"
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="checksum"):
        map_kv_file(path)
    path.write_bytes(b"")
    with pytest.raises(ValueError, match="not a KV state file"):
        map_kv_file(path)
