"""Between a model's tool call and a tool run: names, JSON and the schema are checked first."""

from __future__ import annotations

import json
from typing import Any

import pytest

from appliance.errors import InvalidRequest, SandboxError
from appliance.sandbox.service import RunResult
from appliance.sessions.tools import RunCode, ToolBox, ToolCallError, ToolContext, ToolOutcome


class Echo:
    name = "echo"
    description = "say it back"
    parameters: dict[str, Any] = {
        "type": "object",
        "properties": {"text": {"type": "string"}, "times": {"type": "integer", "minimum": 1}},
        "required": ["text"],
        "additionalProperties": False,
    }

    def __init__(self, fail: Exception | None = None) -> None:
        self.fail = fail
        self.calls: list[dict[str, Any]] = []

    async def run(self, ctx: ToolContext, args: dict[str, Any]) -> ToolOutcome:
        self.calls.append(args)
        if self.fail:
            raise self.fail
        return ToolOutcome(status="ok", content=args["text"] * args.get("times", 1))


def call(name: str, arguments: Any) -> dict[str, Any]:
    raw = arguments if isinstance(arguments, str) else json.dumps(arguments)
    return {"id": "call_1", "type": "function", "function": {"name": name, "arguments": raw}}


@pytest.fixture
def box() -> ToolBox:
    return ToolBox([Echo()])


def test_a_valid_call_gives_the_parsed_arguments(box: ToolBox) -> None:
    assert box.check(["echo"], call("echo", {"text": "hi", "times": 2})) == (
        "echo",
        {"text": "hi", "times": 2},
    )


@pytest.mark.parametrize(
    ("name", "arguments", "says"),
    [
        ("nope", {"text": "x"}, "no tool named 'nope'"),
        ("echo", "{not json", "not valid JSON"),
        ("echo", "[1, 2]", "must be a JSON object"),
        ("echo", {}, "'text' is a required property"),
        ("echo", {"text": 5}, "at text: 5 is not of type 'string'"),
        ("echo", {"text": "x", "times": 0}, "at times: 0 is less than the minimum"),
        ("echo", {"text": "x", "extra": 1}, "Additional properties are not allowed"),
    ],
)
def test_a_bad_call_is_refused_with_a_message_for_the_model(
    box: ToolBox, name: str, arguments: Any, says: str
) -> None:
    with pytest.raises(ToolCallError) as err:
        box.check(["echo"], call(name, arguments))
    assert says in str(err.value)


def test_a_tool_the_agent_was_not_given_is_refused(box: ToolBox) -> None:
    with pytest.raises(ToolCallError):
        box.check([], call("echo", {"text": "x"}))


def test_unknown_tool_names_are_an_invalid_request_listing_the_offered_ones(box: ToolBox) -> None:
    box.require(["echo"])
    with pytest.raises(InvalidRequest) as err:
        box.require(["echo", "web_search"])
    assert "'web_search'" in err.value.message and "offers: echo" in err.value.message
    assert err.value.param == "tools"


def test_specs_are_openai_function_tools(box: ToolBox) -> None:
    (spec,) = box.specs(["echo"])
    assert spec["type"] == "function" and spec["function"]["name"] == "echo"
    assert spec["function"]["parameters"]["required"] == ["text"]


async def test_an_appliance_error_in_a_tool_becomes_a_tool_error() -> None:
    box = ToolBox([Echo(fail=SandboxError("sandboxes are not available: no bwrap"))])
    out = await box.run(
        ToolContext(session_id="ses_1", sandbox_language=None), "echo", {"text": "x"}
    )
    assert out.status == "error" and "no bwrap" in out.content


def result(**kw: Any) -> RunResult:
    base: dict[str, Any] = dict(
        status="ok",
        exit_code=0,
        signal=None,
        stdout="",
        stderr="",
        stdout_truncated=False,
        stderr_truncated=False,
        duration_ms=1.0,
        peak_memory_mb=1.0,
    )
    return RunResult(**{**base, **kw})


def test_run_code_shows_the_model_what_the_program_printed() -> None:
    out = RunCode.outcome(result(stdout="83810205\n"), "sbx-1", replaced=False)
    assert (out.status, out.content) == ("ok", "83810205")
    assert out.detail["sandbox_id"] == "sbx-1"
    value = RunCode.outcome(result(result="55"), "sbx-1", replaced=False)
    assert value.content == "55"
    assert RunCode.outcome(result(), "sbx-1", replaced=False).content == "(no output)"


def test_run_code_reports_errors_timeouts_and_a_lost_sandbox() -> None:
    err = RunCode.outcome(
        result(status="error", exit_code=1, stderr="NameError: name 'y' is not defined\n"),
        "sbx-1",
        replaced=True,
    )
    assert err.status == "error"
    assert "expired" in err.content and "exit code 1" in err.content and "NameError" in err.content
    slow = RunCode.outcome(
        result(status="timeout", exit_code=None, reason="the 5 s timeout"), "sbx-1", replaced=False
    )
    assert slow.status == "timeout" and "the 5 s timeout" in slow.content
    long = RunCode.outcome(result(stdout="x" * 10_000), "sbx-1", replaced=False)
    assert len(long.content) < 2200 and "characters cut" in long.content
