"""The state of one sequence and of one request in the batched engine."""

from __future__ import annotations

from dataclasses import dataclass, field

from appliance.models import chat_format as cf
from appliance.models.worker import protocol as p
from appliance.models.worker.decode import TextAssembler
from appliance.models.worker.sampler import Sampler


def common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


@dataclass(eq=False)
class Seq:
    """One sequence of the context: the tokens its KV cells hold, in position order."""

    id: int
    tokens: list[int] = field(default_factory=list)
    key: str | None = None
    """The session bound to it (its tokens are that session's context)."""
    clean_len: int | None = None
    """Tokens of its last prompt: evaluated in batches, unlike the tokens generated after."""
    job: GenJob | None = None
    last_used: float = 0.0


@dataclass(eq=False)
class GenJob:
    """One chat or completion request, from its admission to its Done."""

    cmd: p.Generate
    prompt: list[int]
    max_tokens: int
    sampler: Sampler
    stops: list[str] | None
    tools: bool
    """The request offered tools: its reply is parsed whole, no deltas are sent."""
    assembler: TextAssembler = field(init=False)
    seq: Seq | None = None
    pending: list[int] = field(default_factory=list)
    """Prompt tokens still to evaluate."""
    next_token: int | None = None
    """Sampled, shown, and evaluated in the next step."""
    n_out: int = 0
    sent: int = 0
    parts: list[str] = field(default_factory=list)
    finish: str | None = None
    cached: int = 0
    """Prompt tokens the sequence already held or copied from another one."""
    shared: int = 0
    """Of those, tokens copied from another sequence."""
    parked: list[p.ParkReport] = field(default_factory=list)
    logprobs: list[p.TokenLogprob] = field(default_factory=list)
    new_logprobs: list[p.TokenLogprob] = field(default_factory=list)
    """Of tokens whose text has not been emitted yet."""
    restore: p.RestoreReport | None = None
    t_start: float = 0.0
    t_first: float | None = None

    def __post_init__(self) -> None:
        self.assembler = TextAssembler(self.stops)

    @property
    def stream(self) -> bool:
        return not self.tools

    def result(self, t_end: float) -> p.GenerateResult:
        text = "".join(self.parts)
        t_first = self.t_first or t_end
        n_prompt = len(self.prompt)
        result = p.GenerateResult(
            text=text,
            finish_reason=self.finish or "stop",
            usage=p.Usage(
                prompt_tokens=n_prompt,
                completion_tokens=self.n_out,
                total_tokens=n_prompt + self.n_out,
                cached_tokens=self.cached,
                shared_tokens=self.shared,
            ),
            timings=p.Timings(
                prefill_ms=(t_first - self.t_start) * 1000.0,
                decode_ms=(t_end - t_first) * 1000.0,
                total_ms=(t_end - self.t_start) * 1000.0,
                slot=self.seq.id if self.seq is not None else 0,
            ),
            parked=self.parked,
            restore=self.restore,
            logprobs=self.logprobs + self.new_logprobs
            if self.cmd.params.logprobs is not None
            else None,
        )
        if self.tools and self.finish != "cancelled":
            content, calls = cf.parse_tool_reply(text)
            result.content = content
            result.tool_calls = calls
            if calls:
                result.finish_reason = "tool_calls"
        return result


@dataclass(eq=False)
class EmbedJob:
    cmd: p.Embed
    tokens: list[list[int]]
    vectors: list[list[float] | None] = field(init=False)

    def __post_init__(self) -> None:
        self.vectors = [None] * len(self.tokens)
