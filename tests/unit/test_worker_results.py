"""The typed worker messages: what a request becomes on the pipe, and how a reply reads.

`GenerateParams.from_request` is the one translation of an OpenAI body into what the worker
reads; `GenerateResult.answer` is the one place of the "parsed text with tools, else the whole
text" rule. Both cross the pipe as msgpack and come back equal.
"""

from __future__ import annotations

import pytest

from appliance.errors import InvalidRequest, WorkerCrashed
from appliance.models.worker import protocol as p
from appliance.models.worker.process import expect


def roundtrip(msg: p.Command | p.Event) -> object:
    frame = p.encode(msg)
    body = frame[p.HEADER.size :]
    return p.decode_command(body) if isinstance(msg, p.Generate) else p.decode_event(body)


def result(**kw: object) -> p.GenerateResult:
    return p.GenerateResult(
        text=str(kw.pop("text", "")),
        finish_reason=str(kw.pop("finish_reason", "stop")),
        usage=p.Usage(prompt_tokens=3, completion_tokens=2, total_tokens=5),
        timings=p.Timings(prefill_ms=1.0, decode_ms=2.0, total_ms=3.0),
        **kw,  # type: ignore[arg-type]
    )


def test_a_request_keeps_only_what_the_worker_reads() -> None:
    params = p.GenerateParams.from_request(
        {
            "model": "m",
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 9,
            "max_completion_tokens": 5,
            "stop": "END",
            "logit_bias": {"5": -100},
            "stream": True,
            "keep_alive": 0,
        }
    )
    assert params.max_tokens == 5, "max_completion_tokens wins over max_tokens"
    assert params.stop == ["END"] and params.logit_bias == {"5": -100.0}
    assert p.GenerateParams.from_request({"prompt": ["once"]}).prompt == "once"
    cmd = p.Generate(id=1, op="chat", params=params)
    assert roundtrip(cmd) == cmd


@pytest.mark.parametrize("body", [{"prompt": ["a", "b"]}, {"prompt": [1]}, {"temperature": "warm"}])
def test_a_request_the_worker_cannot_use_is_refused_before_it_is_sent(
    body: dict[str, object],
) -> None:
    with pytest.raises(InvalidRequest):
        p.GenerateParams.from_request(body)


def test_the_answer_is_the_parsed_text_with_tools_and_the_whole_text_without() -> None:
    plain = result(text="Hello.")
    assert plain.answer == "Hello." and plain.unstreamed == "", "its deltas carried the text"
    parsed = result(text='{"response": "Hi."}', content="Hi.")
    assert parsed.answer == "Hi." and parsed.unstreamed == "Hi."
    call = p.ToolCall(id="call_1", function=p.FunctionCall(name="run", arguments="{}"))
    asked = result(text='{"tool_call": {}}', finish_reason="tool_calls", tool_calls=[call])
    assert asked.unstreamed == "", "a tool call has no text part to send"


def test_every_result_crosses_the_pipe_as_its_own_struct() -> None:
    parked = p.ParkReport(
        slot_key="ses_a",
        path="/kv/ses_a.kv",
        state=p.SavedState(bytes=9, n_tokens=3, prefix_hash="h"),
    )
    results: list[p.Result] = [
        result(parked=[parked], restore=p.RestoreReport(restored=False, reason="other prefix")),
        p.EmbedResult(embeddings=[[0.5, 0.25]], prompt_tokens=2),
        p.TokenizeResult(tokens=[1, 2]),
        p.SaveResult(state=None),
        p.RestoreReport(restored=True, n_tokens=3, bytes=9, ms=1.5),
    ]
    for r in results:
        done = roundtrip(p.Done(id=7, result=r))
        assert isinstance(done, p.Done) and done.result == r and type(done.result) is type(r)


def test_a_result_of_another_kind_is_a_broken_worker() -> None:
    assert expect(p.TokenizeResult(tokens=[1]), p.TokenizeResult).tokens == [1]
    with pytest.raises(WorkerCrashed, match="TokenizeResult where a SaveResult"):
        expect(p.TokenizeResult(tokens=[1]), p.SaveResult)
