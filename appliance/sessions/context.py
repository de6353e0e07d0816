"""What the model sees of a session: the persona, then the part of the transcript that fits.

A session's transcript only grows, but a model's context is fixed. The window the model sees
starts at a transcript position (`start_seq`) that moves forward only when the history no longer
fits: then whole turns are dropped from the front (a turn starts at a user message; the turn in
progress is always kept), the persona stays, and a marker message is stored in the transcript so a
reader sees where the agent's memory now begins. The window start is read back from the newest
marker, so it is stable from one turn to the next: the prompt keeps the same prefix and the KV
state parked for it stays usable. When the window has to move, it moves far enough (down to
`LOW_WATER` of the budget) that the next few turns fit without moving it again.

Token counts come from the model's own tokenizer (`TokenCounter`), asked only when a cheap upper
bound (UTF-8 bytes: a token is never shorter than one byte) says the history might not fit.

This module is pure logic apart from the counter's injected tokenize function.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from appliance.errors import InvalidRequest
from appliance.models import chat_format as cf
from appliance.store import Message

MESSAGE_OVERHEAD = 8
"""Tokens a chat template adds around one message (role, delimiters, newlines), generously."""
PROMPT_MARGIN = 48
"""Tokens kept free for what the template adds once (BOS, a default system prompt, the
generation prompt)."""
LOW_WATER = 0.6
"""When turns must be dropped, drop until the window uses at most this share of the budget."""
MARKER_KEY = "context_marker"


def is_marker(m: Message) -> bool:
    return bool(m.meta.get(MARKER_KEY))


def window_start(transcript: Sequence[Message]) -> int:
    """The first seq the model sees: set by the newest context marker, else the beginning."""
    for m in reversed(transcript):
        if is_marker(m):
            return int(m.meta.get("context_start_seq", 0))
    return 0


def openai_message(m: Message) -> dict[str, Any]:
    out: dict[str, Any] = {"role": m.role, "content": m.content}
    if m.tool_calls:
        out["tool_calls"] = m.tool_calls
    if m.tool_call_id:
        out["tool_call_id"] = m.tool_call_id
    if m.name:
        out["name"] = m.name
    return out


def visible(transcript: Sequence[Message], start_seq: int) -> list[Message]:
    """The stored messages inside the window (markers are for readers, not for the model)."""
    return [m for m in transcript if m.seq >= start_seq and not is_marker(m)]


def model_messages(persona: str | None, messages: Sequence[Message]) -> list[dict[str, Any]]:
    """OpenAI messages for the model: persona first, then the window.

    A tool call that was never answered (the daemon stopped mid-turn, or the turn was cancelled
    before its result was stored) gets a stand-in result, so the conversation stays well formed.
    """
    out: list[dict[str, Any]] = [{"role": "system", "content": persona}] if persona else []
    pending: list[dict[str, Any]] = []

    def close_pending() -> None:
        for call in pending:
            out.append(
                {
                    "role": "tool",
                    "tool_call_id": call.get("id"),
                    "name": call["function"]["name"],
                    "content": "(no result: the turn was interrupted before this tool finished)",
                }
            )
        pending.clear()

    for m in messages:
        if m.role == "tool":
            pending[:] = [c for c in pending if c.get("id") != m.tool_call_id]
        else:
            close_pending()
        out.append(openai_message(m))
        if m.role == "assistant" and m.tool_calls:
            pending.extend(m.tool_calls)
    close_pending()
    return out


def message_text(message: dict[str, Any]) -> str:
    """The text a template renders for one message (tool calls shown as the JSON the model writes)."""
    (flat,) = cf.normalise_messages([message], None)
    return flat["role"] + "\n" + flat["content"]


def upper_bound(text: str) -> int:
    """More tokens than `text` can ever take: a token covers at least one byte."""
    return len(text.encode("utf-8")) + 1


def reply_reserve(n_ctx: int, max_tokens: int | None) -> int:
    """Room kept for the reply: what was asked for, but never more than a quarter of the context."""
    return max(16, min(max_tokens or 512, n_ctx // 4))


@dataclass
class Fit:
    start_seq: int
    dropped: int
    """Messages that left the window (0 when it did not move)."""
    tokens: int
    """History tokens of the window after the move."""


def fit_window(
    messages: Sequence[Message], costs: Sequence[int], budget: int, *, shrink: bool = False
) -> Fit:
    """Where the window must start so that the history fits `budget` tokens.

    `messages` are the visible ones (oldest first) and `costs` their token counts. Nothing moves
    when they fit (unless `shrink`, used after the model refused a prompt the counts said would
    fit: then at least one more turn goes). Otherwise the window starts at the oldest user message
    from which the rest fits in LOW_WATER of the budget (or, failing that, in the budget); the turn
    in progress, from the last user message, always stays. InvalidRequest when even that is too big.
    """
    total = sum(costs)
    start = messages[0].seq if messages else 0
    if total <= budget and not shrink:
        return Fit(start_seq=start, dropped=0, tokens=total)
    suffix = [0] * (len(costs) + 1)
    for i in range(len(costs) - 1, -1, -1):
        suffix[i] = suffix[i + 1] + costs[i]
    turn_starts = [i for i, m in enumerate(messages) if m.role == "user" and i > 0]
    low = int(budget * LOW_WATER)
    choice = next((i for i in turn_starts if suffix[i] <= low), None)
    if choice is None:
        choice = next((i for i in turn_starts if suffix[i] <= budget), None)
    if choice is None:
        current = turn_starts[-1] if turn_starts else 0
        raise InvalidRequest(
            f"this turn alone takes about {suffix[current]} tokens, more than the {budget} the "
            "model's context leaves for the conversation; send a shorter message, or use a model "
            "with a larger context_size",
            code="context_length_exceeded",
        )
    return Fit(start_seq=messages[choice].seq, dropped=choice, tokens=suffix[choice])


def marker_text(dropped: int, n_ctx: int) -> str:
    return (
        f"[{dropped} earlier message{'s' if dropped != 1 else ''} no longer fit the model's "
        f"{n_ctx}-token context and were dropped; the agent does not see them from here on]"
    )


Tokenize = Callable[[str, Sequence[str]], Awaitable[list[int]]]
"""(model id, texts) -> the token count of each text."""


class TokenCounter:
    """Exact token counts per model, remembered (bounded LRU) so each text is tokenized once."""

    def __init__(self, tokenize: Tokenize, capacity: int = 8192) -> None:
        self._tokenize = tokenize
        self._capacity = capacity
        self._cache: OrderedDict[tuple[str, bytes], int] = OrderedDict()

    async def count(
        self, model_id: str, texts: Sequence[str], *, tokenize: Tokenize | None = None
    ) -> list[int]:
        """Counts of `texts`; the ones not remembered are asked of `tokenize` (default: the
        counter's own)."""
        keys = [
            (model_id, hashlib.blake2b(t.encode("utf-8"), digest_size=16).digest()) for t in texts
        ]
        missing = [i for i, k in enumerate(keys) if k not in self._cache]
        if missing:
            counts = await (tokenize or self._tokenize)(model_id, [texts[i] for i in missing])
            for i, n in zip(missing, counts, strict=True):
                self._cache[keys[i]] = n
        out = []
        for k in keys:
            self._cache.move_to_end(k)
            out.append(self._cache[k])
        while len(self._cache) > self._capacity:
            self._cache.popitem(last=False)
        return out
