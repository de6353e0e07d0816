"""The context window of a session: what the model sees, and which turns go when it overflows."""

from __future__ import annotations

from typing import Any

import pytest

from appliance.errors import InvalidRequest
from appliance.sessions.context import (
    MARKER_KEY,
    TokenCounter,
    fit_window,
    marker_text,
    message_text,
    model_messages,
    openai_message,
    reply_reserve,
    upper_bound,
    visible,
    window_start,
)
from appliance.store import Message


def msg(seq: int, role: str, content: str | None = "x", **kw: Any) -> Message:
    return Message(
        id=f"msg_{seq}",
        session_id="ses_1",
        seq=seq,
        role=role,
        content=content,  # type: ignore[arg-type]
        tool_calls=kw.get("tool_calls"),
        tool_call_id=kw.get("tool_call_id"),
        name=kw.get("name"),
        created=0.0,
        tokens=None,
        meta=kw.get("meta", {}),
    )


def call(cid: str, name: str = "run_code") -> dict[str, Any]:
    return {"id": cid, "type": "function", "function": {"name": name, "arguments": '{"code": "1"}'}}


def conversation(turns: int) -> list[Message]:
    """user/assistant pairs: seq 1, 2 are turn 1, seq 3, 4 turn 2, ..."""
    out = []
    for t in range(turns):
        out += [msg(2 * t + 1, "user", f"question {t}"), msg(2 * t + 2, "assistant", f"answer {t}")]
    return out


def test_a_history_that_fits_stays_whole() -> None:
    msgs = conversation(3)
    fit = fit_window(msgs, [10] * 6, budget=100)
    assert (fit.start_seq, fit.dropped, fit.tokens) == (1, 0, 60)


def test_overflow_drops_whole_turns_from_the_front_down_to_the_low_water_mark() -> None:
    msgs = [*conversation(5), msg(11, "user", "the new question")]
    costs = [10] * 11  # 110 tokens against a budget of 100; low water is 60
    fit = fit_window(msgs, costs, budget=100)
    assert msgs[fit.dropped].role == "user", "the window starts at a turn"
    assert fit.tokens <= 60
    assert fit.start_seq == 7 and fit.dropped == 6
    kept = [m for m in msgs if m.seq >= fit.start_seq]
    assert kept[-1].content == "the new question"


def test_when_the_low_water_mark_cannot_be_reached_the_budget_is_enough() -> None:
    msgs = [msg(1, "user"), msg(2, "assistant"), msg(3, "user"), msg(4, "assistant")]
    fit = fit_window(msgs, [40, 40, 40, 40], budget=90)
    assert fit.start_seq == 3 and fit.tokens == 80


def test_shrink_drops_at_least_one_more_turn_even_when_the_counts_fit() -> None:
    msgs = conversation(3)
    fit = fit_window(msgs, [1] * 6, budget=1000, shrink=True)
    assert fit.dropped >= 2 and fit.start_seq > 1


def test_the_turn_in_progress_is_never_dropped() -> None:
    msgs = [
        msg(1, "user"),
        msg(2, "assistant"),
        msg(3, "user", "huge"),
        msg(4, "assistant", None, tool_calls=[call("c1")]),
        msg(5, "tool", "out", tool_call_id="c1"),
    ]
    with pytest.raises(InvalidRequest) as err:
        fit_window(msgs, [5, 5, 200, 5, 5], budget=100)
    assert err.value.code == "context_length_exceeded"
    assert "shorter message" in err.value.message


def test_tool_results_stay_with_their_call_when_turns_are_dropped() -> None:
    msgs = [
        msg(1, "user"),
        msg(2, "assistant", None, tool_calls=[call("c1")]),
        msg(3, "tool", "r", tool_call_id="c1"),
        msg(4, "assistant"),
        msg(5, "user"),
        msg(6, "assistant"),
    ]
    fit = fit_window(msgs, [30, 30, 30, 30, 10, 10], budget=100)
    assert fit.start_seq == 5  # never in the middle of the first turn


def test_the_window_starts_at_the_newest_marker_and_markers_are_not_shown_to_the_model() -> None:
    marker = msg(8, "system", marker_text(6, 512), meta={MARKER_KEY: True, "context_start_seq": 7})
    transcript = [*conversation(3), msg(7, "user", "later"), marker, msg(9, "assistant", "reply")]
    start = window_start(transcript)
    assert start == 7
    shown = visible(transcript, start)
    assert [m.seq for m in shown] == [7, 9]
    assert "6 earlier messages" in marker.content and "512-token" in marker.content
    assert window_start(conversation(2)) == 0


def test_persona_comes_first_and_an_unanswered_tool_call_gets_a_stand_in_result() -> None:
    msgs = [
        msg(1, "user", "compute"),
        msg(2, "assistant", None, tool_calls=[call("c1"), call("c2")]),
        msg(3, "tool", "42", tool_call_id="c1", name="run_code"),
        msg(4, "user", "again?"),
    ]
    out = model_messages("You are terse.", msgs)
    assert out[0] == {"role": "system", "content": "You are terse."}
    roles = [(m["role"], m.get("tool_call_id")) for m in out]
    assert roles == [
        ("system", None),
        ("user", None),
        ("assistant", None),
        ("tool", "c1"),
        ("tool", "c2"),
        ("user", None),
    ]
    assert "interrupted" in out[4]["content"]
    assert model_messages(None, [msg(1, "user")])[0]["role"] == "user"


def test_an_interrupted_turn_at_the_end_is_closed_too() -> None:
    out = model_messages(None, [msg(1, "user"), msg(2, "assistant", None, tool_calls=[call("c9")])])
    assert out[-1]["role"] == "tool" and out[-1]["tool_call_id"] == "c9"


def test_message_text_shows_tool_calls_as_the_json_the_model_writes() -> None:
    text = message_text(openai_message(msg(2, "assistant", None, tool_calls=[call("c1")])))
    assert text.startswith("assistant\n") and '"tool_call"' in text and '"run_code"' in text


def test_upper_bound_counts_bytes_and_reserve_is_capped() -> None:
    assert upper_bound("héllo") == 7
    assert reply_reserve(2048, 1024) == 512
    assert reply_reserve(2048, 64) == 64
    assert reply_reserve(2048, None) == 512


async def test_token_counter_asks_once_per_text_and_model() -> None:
    asked: list[tuple[str, list[str]]] = []

    async def tokenize(model: str, texts: Any) -> list[int]:
        asked.append((model, list(texts)))
        return [len(t) for t in texts]

    counter = TokenCounter(tokenize, capacity=3)
    assert await counter.count("m", ["aa", "bbb"]) == [2, 3]
    assert await counter.count("m", ["bbb", "c"]) == [3, 1]
    assert await counter.count("other", ["aa"]) == [2]
    assert asked == [("m", ["aa", "bbb"]), ("m", ["c"]), ("other", ["aa"])]
    assert await counter.count("m", ["aa"]) == [2]  # evicted (capacity 3): asked again
    assert asked[-1] == ("m", ["aa"])
