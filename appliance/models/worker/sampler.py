"""A request's sampler chain, built from llama.cpp's sampler API (one chain per sequence).

The order is llama-cpp-python's: logit bias, penalties, grammar, then greedy at temperature 0 or
top-k, top-p, min-p, temperature and a seeded draw. Defaults are llama-cpp-python's too (top_k 40,
top_p 0.95, min_p 0.05, temperature 0.8, penalties over the last 64 tokens), so replies read as
they did before the engine was batched.

Grammars: `llama_sampler_init_grammar` returns NULL for a grammar llama.cpp cannot parse, and a
NULL in a chain is a SIGSEGV at the next token. The daemon sends proven grammars only; the cache
here checks each one once against this model's vocabulary and clones the parsed sampler for each
request, so the crash stays out even if one slipped through.
"""

from __future__ import annotations

import collections
import random
import threading
from typing import Any

import llama_cpp

from appliance.errors import InvalidRequest
from appliance.models.worker.protocol import GenerateParams
from appliance.sampling import fold_seed

GRAMMAR_CACHE = 64
"""Distinct grammars a worker keeps parsed against its vocabulary (least recently used out)."""
PENALTY_LAST_N = 64
DEFAULT_TEMPERATURE = 0.8


class GrammarCache:
    """Parsed grammar samplers by GBNF text; `sampler` hands out a clone for one request."""

    def __init__(self, vocab: Any, size: int = GRAMMAR_CACHE) -> None:
        self.vocab = vocab
        self.size = size
        self._parsed: collections.OrderedDict[str, Any] = collections.OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._parsed)

    def sampler(self, gbnf: str) -> Any:
        """A fresh grammar sampler (the caller owns it); InvalidRequest for a grammar llama.cpp
        cannot parse."""
        with self._lock:
            parsed = self._parsed.get(gbnf)
            if parsed is None:
                parsed = llama_cpp.llama_sampler_init_grammar(
                    self.vocab, gbnf.encode("utf-8"), b"root"
                )
                if not parsed:
                    raise InvalidRequest(
                        "llama.cpp cannot parse the grammar of this request; simplify its schema"
                    )
                self._parsed[gbnf] = parsed
                while len(self._parsed) > self.size:
                    _, old = self._parsed.popitem(last=False)
                    llama_cpp.llama_sampler_free(old)
            else:
                self._parsed.move_to_end(gbnf)
            return llama_cpp.llama_sampler_clone(parsed)

    def close(self) -> None:
        with self._lock:
            for s in self._parsed.values():
                llama_cpp.llama_sampler_free(s)
            self._parsed.clear()


class Sampler:
    """One request's chain. `sample` draws and accepts the next token from an output of the last
    decode; `close` frees the chain (and every sampler in it)."""

    def __init__(
        self,
        params: GenerateParams,
        *,
        n_vocab: int,
        bias: dict[int, float],
        grammar: Any = None,
    ) -> None:
        chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
        self.chain: Any = chain

        def add(s: Any) -> None:
            llama_cpp.llama_sampler_chain_add(chain, s)

        if bias:
            arr = (llama_cpp.llama_logit_bias * len(bias))()
            for i, (tok, value) in enumerate(bias.items()):
                arr[i].token = tok  # type: ignore[assignment]
                arr[i].bias = value
            add(llama_cpp.llama_sampler_init_logit_bias(n_vocab, len(bias), arr))
        repeat = params.repeat_penalty if params.repeat_penalty is not None else 1.0
        freq = params.frequency_penalty or 0.0
        present = params.presence_penalty or 0.0
        if repeat != 1.0 or freq or present:
            add(
                llama_cpp.llama_sampler_init_penalties(
                    n_vocab, PENALTY_LAST_N, repeat, freq, present
                )
            )
        if grammar is not None:
            add(grammar)
        temp = DEFAULT_TEMPERATURE if params.temperature is None else params.temperature
        if temp <= 0:
            add(llama_cpp.llama_sampler_init_greedy())
        else:
            seed = fold_seed(params.seed) if params.seed is not None else random.randrange(2**31)
            top_k = 40 if params.top_k is None else params.top_k
            if top_k > 0:
                add(llama_cpp.llama_sampler_init_top_k(top_k))
            add(llama_cpp.llama_sampler_init_top_p(params.top_p or 0.95, 1))
            add(
                llama_cpp.llama_sampler_init_min_p(
                    0.05 if params.min_p is None else params.min_p, 1
                )
            )
            add(llama_cpp.llama_sampler_init_temp(temp))
            add(llama_cpp.llama_sampler_init_dist(seed))

    def sample(self, ctx: Any, index: int) -> int:
        return int(llama_cpp.llama_sampler_sample(self.chain, ctx, index))

    def close(self) -> None:
        if self.chain:
            llama_cpp.llama_sampler_free(self.chain)
            self.chain = None


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
