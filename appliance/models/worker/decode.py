"""Token-by-token decoding inside a worker: text deltas, stop strings, end of generation.

llama-cpp-python's streaming completion re-detokenises the whole output for every new token, which
turns a long reply quadratic (400 tokens of a tiny model: 10 s instead of 0.3 s). This loop keeps
one incremental UTF-8 decoder instead: each token's bytes go in once, whole characters come out,
and text that might be the start of a stop string is held back until it is known not to be.
"""

from __future__ import annotations

import codecs
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from appliance.errors import InvalidRequest
from appliance.models.worker.protocol import GenerateParams
from appliance.sampling import fold_seed


class TextAssembler:
    """Bytes of generated tokens in, text safe to show out; stops at the first stop string."""

    def __init__(self, stops: list[str] | None = None) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.stops = [s for s in (stops or []) if s]
        self._pending = ""
        self.stopped = False

    def feed(self, data: bytes) -> str:
        if self.stopped:
            return ""
        self._pending += self._decoder.decode(data)
        return self._release(final=False)

    def finish(self) -> str:
        if self.stopped:
            return ""
        self._pending += self._decoder.decode(b"", final=True)
        return self._release(final=True)

    def _release(self, *, final: bool) -> str:
        text = self._pending
        cut = min((i for i in (text.find(s) for s in self.stops) if i >= 0), default=-1)
        if cut >= 0:
            self.stopped = True
            self._pending = ""
            return text[:cut]
        hold = 0 if final else self._held_back(text)
        self._pending = text[len(text) - hold :] if hold else ""
        return text[: len(text) - hold]

    def _held_back(self, text: str) -> int:
        """Length of the longest tail of `text` that begins some stop string."""
        best = 0
        for s in self.stops:
            for k in range(min(len(s) - 1, len(text)), best, -1):
                if s.startswith(text[-k:]):
                    best = k
                    break
        return best


@dataclass
class Decoded:
    text: str
    finish_reason: str  # "stop" | "length" | "cancelled"
    completion_tokens: int
    first_token_at: float | None


def decode(
    llm: Any,
    prompt: list[int],
    *,
    max_tokens: int,
    sampling: dict[str, Any],
    grammar: Any,
    stops: list[str] | None,
    is_eog: Callable[[int], bool],
    piece: Callable[[int], bytes],
    emit: Callable[[str], None] | None,
    cancelled: Callable[[], bool],
    clock: Callable[[], float],
) -> Decoded:
    """Generate up to max_tokens after `prompt` on a llama_cpp.Llama, emitting text as it comes."""
    seed = sampling.pop("seed", None)
    llm.set_seed(fold_seed(int(seed)) if seed is not None else random.randrange(2**31))
    assembler = TextAssembler(stops)
    parts: list[str] = []
    finish = "length"
    n_out = 0
    first: float | None = None
    gen = llm.generate(prompt, grammar=grammar, **sampling)
    try:
        for token in gen:
            if first is None:
                first = clock()
            if cancelled():
                finish = "cancelled"
                break
            if is_eog(token):
                finish = "stop"
                break
            n_out += 1
            text = assembler.feed(piece(token))
            if text:
                parts.append(text)
                if emit is not None:
                    emit(text)
            if assembler.stopped:
                finish = "stop"
                break
            if n_out >= max_tokens:
                break
    finally:
        gen.close()
    tail = assembler.finish()
    if tail:
        parts.append(tail)
        if emit is not None:
            emit(tail)
    return Decoded("".join(parts), finish, n_out, first)


def sampling_args(params: GenerateParams) -> dict[str, Any]:
    """OpenAI request fields -> llama_cpp.Llama.generate keyword arguments."""
    out: dict[str, Any] = {"temp": 0.8 if params.temperature is None else params.temperature}
    for name in (
        "top_p",
        "top_k",
        "min_p",
        "presence_penalty",
        "frequency_penalty",
        "repeat_penalty",
        "seed",
    ):
        value = getattr(params, name)
        if value is not None:
            out[name] = value
    return out


def parse_logit_bias(raw: Any, n_vocab: int) -> dict[int, float]:
    """OpenAI's logit_bias ({"token id": -100..100}) checked against the vocabulary."""
    if not raw:
        return {}
    if not isinstance(raw, dict):
        raise InvalidRequest(
            "logit_bias must map token ids to numbers between -100 and 100", param="logit_bias"
        )
    out: dict[int, float] = {}
    for key, value in raw.items():
        try:
            tok, bias = int(key), float(value)
        except (TypeError, ValueError):
            raise InvalidRequest(
                f"logit_bias[{key!r}] is not a token id with a number", param="logit_bias"
            ) from None
        if not 0 <= tok < n_vocab or not -100 <= bias <= 100:
            raise InvalidRequest(
                f"logit_bias[{key!r}]: token ids go from 0 to {n_vocab - 1} and biases from -100 to 100",
                param="logit_bias",
            )
        out[tok] = bias
    return out
