"""Agents, sessions, transcripts, tool runs and response links on a real database."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.errors import Conflict, InvalidRequest, NotFound
from appliance.store import AgentPatch, AgentSpec, GenerationParams, MessageDraft, Store


class FakeClock:
    def __init__(self, now: float = 1_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, s: float) -> None:
        self.now += s


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store(tmp_path: Path, clock: FakeClock) -> Iterator[Store]:
    with Store(tmp_path, clock=clock) as s:
        yield s


def coder(store: Store) -> str:
    return store.agents.create(
        AgentSpec(
            name="coder",
            model="smollm2",
            tools=["run_code"],
            sandbox="python",
            params=GenerationParams(temperature=0.2),
        )
    ).id


# --- agents ----------------------------------------------------------------------------------


def test_agent_names_are_unique_and_validated(store: Store) -> None:
    coder(store)
    with pytest.raises(Conflict, match="exists"):
        store.agents.create(AgentSpec(name="coder", model="other"))
    with pytest.raises(InvalidRequest, match="not valid") as bad:
        store.agents.create(AgentSpec(name="no spaces", model="m"))
    assert bad.value.param == "name"
    with pytest.raises(InvalidRequest, match="model"):
        store.agents.create(AgentSpec(name="nomodel", model=" "))


def test_agent_update_changes_only_the_given_fields(store: Store, clock: FakeClock) -> None:
    agent_id = coder(store)
    clock.advance(5)
    updated = store.agents.update("coder", AgentPatch(persona="Be terse.", sandbox=None))
    assert updated.id == agent_id and updated.persona == "Be terse." and updated.sandbox is None
    assert updated.tools == ["run_code"] and updated.params.temperature == 0.2
    assert updated.updated == updated.created + 5
    store.agents.create(AgentSpec(name="other", model="m"))
    with pytest.raises(Conflict):
        store.agents.update(agent_id, AgentPatch(name="other"))
    assert store.agents.get(agent_id).name == "coder"


def test_agents_list_pages_by_name(store: Store) -> None:
    for name in ["delta", "alpha", "charlie", "bravo", "echo"]:
        store.agents.create(AgentSpec(name=name, model="m"))
    first = store.agents.list(limit=2)
    assert [a.name for a in first.items] == ["alpha", "bravo"] and first.next_after == "bravo"
    second = store.agents.list(limit=2, after=first.next_after)
    third = store.agents.list(limit=2, after=second.next_after)
    assert [a.name for a in second.items + third.items] == ["charlie", "delta", "echo"]
    assert third.next_after is None


def test_an_agent_with_sessions_is_deleted_only_together_with_them(store: Store) -> None:
    coder(store)
    s = store.sessions.create("coder")
    store.sessions.update(s.id, sandbox_id="sbx_1")
    with pytest.raises(Conflict, match="1 session"):
        store.agents.delete("coder")
    cleanup = store.agents.delete("coder", with_sessions=True)
    assert cleanup.session_ids == [s.id] and cleanup.sandbox_ids == ["sbx_1"]
    assert store.agents.find("coder") is None
    with pytest.raises(NotFound):
        store.sessions.get(s.id)


# --- sessions and transcripts ----------------------------------------------------------------


def test_session_needs_an_existing_agent_or_a_model(store: Store) -> None:
    with pytest.raises(NotFound, match="no agent"):
        store.sessions.create("ghost")
    with pytest.raises(InvalidRequest):
        store.sessions.create(None)
    bare = store.sessions.create(None, model="smollm2")
    assert bare.agent_id is None and bare.status == "created"


def test_messages_get_consecutive_seqs_and_update_the_session(
    store: Store, clock: FakeClock
) -> None:
    coder(store)
    s = store.sessions.create("coder")
    clock.advance(10)
    first = store.messages.append(s.id, "system", "You code.")
    more = store.messages.append_many(
        s.id,
        [
            MessageDraft(role="user", content="2+2?"),
            MessageDraft(
                role="assistant",
                tool_calls=[
                    {
                        "id": "c1",
                        "type": "function",
                        "function": {"name": "run_code", "arguments": '{"code": "print(4)"}'},
                    }
                ],
            ),
            MessageDraft(role="tool", content="4", tool_call_id="c1"),
        ],
    )
    assert [first.seq, *(m.seq for m in more)] == [1, 2, 3, 4]
    assert store.messages.last_seq(s.id) == 4
    assert store.sessions.get(s.id).updated == s.created + 10
    assert [m.role for m in store.messages.transcript(s.id, after_seq=1, upto_seq=3)] == [
        "user",
        "assistant",
    ]
    assert store.messages.get(more[1].id).tool_calls == more[1].tool_calls


def test_a_bad_message_in_a_batch_writes_none_of_it(store: Store) -> None:
    s = store.sessions.create(None, model="m")
    with pytest.raises(InvalidRequest, match="tool_call_id"):
        store.messages.append_many(
            s.id, [MessageDraft(role="user", content="hi"), MessageDraft(role="tool", content="x")]
        )
    assert store.messages.transcript(s.id) == []
    with pytest.raises(NotFound):
        store.messages.append("ses_missing", "user", "hi")


def test_concurrent_writers_never_share_a_seq(store: Store) -> None:
    s = store.sessions.create(None, model="m")

    def write(n: int) -> None:
        for i in range(25):
            store.messages.append(s.id, "user", f"{n}-{i}")

    threads = [threading.Thread(target=write, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seqs = [m.seq for m in store.messages.transcript(s.id)]
    assert seqs == list(range(1, 101))


def test_context_dropped_marker_is_kept_in_meta(store: Store) -> None:
    s = store.sessions.create(None, model="m")
    marker = store.messages.append(
        s.id, "system", "[12 earlier messages no longer fit]", meta={"context_dropped": 12}
    )
    store.messages.update_meta(marker.id, {"shown": True})
    assert store.messages.get(marker.id).meta == {"context_dropped": 12, "shown": True}


def test_sessions_list_newest_first_with_filters_and_pages(store: Store) -> None:
    coder(store)
    made = [store.sessions.create("coder", title=f"s{i}") for i in range(5)]
    store.sessions.create(None, model="m")
    store.sessions.set_status(made[0].id, "parked")
    page = store.sessions.list(agent="coder", limit=3)
    rest = store.sessions.list(agent="coder", limit=3, after=page.next_after)
    assert [s.title for s in page.items + rest.items] == ["s4", "s3", "s2", "s1", "s0"]
    assert rest.next_after is None
    assert [s.id for s in store.sessions.list(status="parked").items] == [made[0].id]
    with pytest.raises(InvalidRequest):
        store.sessions.set_status(made[0].id, "sleeping")  # type: ignore[arg-type]


# --- fork ------------------------------------------------------------------------------------


def test_fork_copies_the_transcript_up_to_the_message(store: Store) -> None:
    coder(store)
    parent = store.sessions.create("coder", title="original")
    msgs = store.messages.append_many(
        parent.id,
        [
            MessageDraft(role="user", content="one"),
            MessageDraft(
                role="assistant",
                tool_calls=[
                    {
                        "id": "c1",
                        "type": "function",
                        "function": {"name": "run_code", "arguments": "{}"},
                    }
                ],
            ),
            MessageDraft(role="tool", content="ran", tool_call_id="c1"),
            MessageDraft(role="assistant", content="done"),
        ],
    )
    run = store.tool_runs.start(
        parent.id, "run_code", {"code": "1"}, message_id=msgs[1].id, call_id="c1"
    )
    store.tool_runs.finish(run.id, "ok", "ran", duration_ms=12.5)

    fork = store.sessions.fork(parent.id, at_message=msgs[2].id)
    assert fork.parent_id == parent.id and fork.forked_at_message == msgs[2].id
    assert fork.title == "original (fork)" and fork.agent_id == parent.agent_id
    copied = store.messages.transcript(fork.id)
    assert [(m.seq, m.role, m.content) for m in copied] == [
        (1, "user", "one"),
        (2, "assistant", None),
        (3, "tool", "ran"),
    ]
    assert not {m.id for m in copied} & {m.id for m in msgs}
    [fork_run] = store.tool_runs.for_session(fork.id)
    assert fork_run.message_id == copied[1].id and fork_run.result == "ran"

    # The two sessions now diverge independently.
    store.messages.append(fork.id, "user", "branch")
    assert store.messages.last_seq(parent.id) == 4 and store.messages.last_seq(fork.id) == 4
    assert store.messages.transcript(parent.id)[3].content == "done"

    whole = store.sessions.fork(parent.id, title="copy")
    assert whole.message_count == 4 and whole.forked_at_message == msgs[3].id
    with pytest.raises(NotFound, match="no message"):
        store.sessions.fork(parent.id, at_message=store.messages.transcript(fork.id)[0].id)


# --- delete ----------------------------------------------------------------------------------


def test_delete_cascades_rows_and_returns_the_files_to_remove(store: Store) -> None:
    coder(store)
    s = store.sessions.create("coder")
    other = store.sessions.create("coder")
    m = store.messages.append(s.id, "assistant", None, tool_calls=[{"id": "c"}])
    store.tool_runs.start(s.id, "run_code", {}, message_id=m.id)
    store.responses.record(s.id, first_seq=1, last_seq=1)
    store.kv.park(
        s.id, model_fingerprint="fpA", prefix_hash="h", n_tokens=5, bytes=10, path="/kv/a.bin"
    )
    store.kv.park(
        s.id, model_fingerprint="fpB", prefix_hash="h", n_tokens=5, bytes=10, path="/kv/b.bin"
    )
    store.kv.park(
        other.id,
        model_fingerprint="fpA",
        prefix_hash="h",
        n_tokens=5,
        bytes=10,
        path="/kv/other.bin",
    )
    store.sessions.update(s.id, sandbox_id="sbx_9")
    fork = store.sessions.fork(s.id)

    cleanup = store.sessions.delete(s.id)
    assert cleanup.session_ids == [s.id]
    assert cleanup.kv_paths == ["/kv/a.bin", "/kv/b.bin"]
    assert cleanup.sandbox_ids == ["sbx_9"]
    con = store.db.connection()
    for table in ("messages", "tool_runs", "responses", "kv_entries"):
        n = con.execute(f"SELECT count(*) FROM {table} WHERE session_id = ?", (s.id,)).fetchone()
        assert n == (0,), table
    assert [e.path for e in store.kv.entries()] == ["/kv/other.bin"]
    assert store.sessions.get(fork.id).parent_id is None  # the fork lives on
    assert store.messages.transcript(fork.id)[0].tool_calls == [{"id": "c"}]
    with pytest.raises(NotFound):
        store.sessions.delete(s.id)


# --- tool runs and responses -----------------------------------------------------------------


def test_tool_run_records_outcome_and_duration(store: Store, clock: FakeClock) -> None:
    s = store.sessions.create(None, model="m")
    run = store.tool_runs.start(s.id, "run_code", {"code": "print(1)"}, call_id="c1")
    assert run.status == "running"
    clock.advance(0.25)
    done = store.tool_runs.finish(run.id, "timeout", None)
    assert done.status == "timeout" and done.duration_ms == pytest.approx(250.0)
    assert store.tool_runs.get(run.id) == done
    with pytest.raises(InvalidRequest):
        store.tool_runs.finish(run.id, "running", None)


def test_responses_chain_through_previous_response_id(store: Store) -> None:
    s = store.sessions.create(None, model="smollm2")
    _, first = store.responses.record_turn(
        s.id,
        [
            MessageDraft(role="user", content="My name is Ada."),
            MessageDraft(role="assistant", content="Hello Ada."),
        ],
        model="smollm2",
    )
    msgs, second = store.responses.record_turn(
        s.id,
        [
            MessageDraft(role="user", content="What is my name?"),
            MessageDraft(role="assistant", content="Ada."),
        ],
        previous_response_id=first.id,
        model="smollm2",
    )
    assert first.id.startswith("resp_") and (first.first_seq, first.last_seq) == (1, 2)
    assert (second.first_seq, second.last_seq) == (3, 4) and msgs[0].seq == 3
    assert store.sessions.get(s.id).last_response_id == second.id

    link = store.responses.get(first.id)
    context = store.messages.transcript(link.session_id, upto_seq=link.last_seq)
    assert [m.content for m in context] == ["My name is Ada.", "Hello Ada."]
    assert store.responses.get(second.id).previous_response_id == first.id

    with pytest.raises(NotFound, match="store=true"):
        store.responses.get("resp_unknown")
    with pytest.raises(InvalidRequest):
        store.responses.record(s.id, first_seq=4, last_seq=9)
    with pytest.raises(NotFound):
        store.responses.record_turn(
            s.id, [MessageDraft(role="user", content="x")], previous_response_id="resp_unknown"
        )
    assert store.messages.last_seq(s.id) == 4  # the failed turn wrote nothing
