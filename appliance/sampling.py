"""The ranges of generation parameters, declared once as msgspec constraint types.

Every request struct that carries sampling fields (the OpenAI routes in appliance.openai.shapes,
session turns, agents' stored parameters) uses these types, so a value out of range is refused
with a 400 that names the field while the body is decoded: before a lease is taken, a model
loaded or a value reaches llama.cpp. The ranges are OpenAI's documented ones where OpenAI has
the field; the llama.cpp-only fields get the range llama.cpp gives them meaning in.

The seed is a signed 64-bit integer, OpenAI's type for it (and the widest bound msgspec checks).
llama.cpp's sampler takes a 32-bit seed (`llama_sampler_init_dist(uint32_t)`), so the worker folds a wider
value into 32 bits (`fold_seed`): equal seeds still give equal samples. A seed that folds to
0xFFFFFFFF (-1, say) is llama.cpp's LLAMA_DEFAULT_SEED: a random seed, as in llama-server.
"""

from __future__ import annotations

from typing import Annotated

from msgspec import Meta

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1

Temperature = Annotated[
    float, Meta(ge=0.0, le=2.0, description="0 to 2; 0 is greedy (deterministic)")
]
TopP = Annotated[float, Meta(gt=0.0, le=1.0, description="Nucleus sampling mass, in (0, 1]")]
TopK = Annotated[
    int, Meta(ge=0, le=2**31 - 1, description="Keep the k most likely tokens; 0 disables")
]
MinP = Annotated[
    float, Meta(ge=0.0, le=1.0, description="Drop tokens below min_p times the most likely one")
]
Penalty = Annotated[float, Meta(ge=-2.0, le=2.0, description="-2 to 2")]
RepeatPenalty = Annotated[
    float, Meta(gt=0.0, le=100.0, description="Penalty for repeated tokens; 1 is none")
]
MaxTokens = Annotated[
    int, Meta(ge=1, le=2**31 - 1, description="At least 1, and no more than the model's context")
]
Seed = Annotated[int, Meta(ge=INT64_MIN, le=INT64_MAX, description="A signed 64-bit integer")]
Bias = Annotated[float, Meta(ge=-100.0, le=100.0)]
TokenId = Annotated[
    str, Meta(pattern=r"^[0-9]{1,10}$", description="A token id, as a decimal string")
]
StopList = Annotated[list[str], Meta(max_length=4, description="Up to 4 stop strings")]
KEEP_ALIVE_MAX = 1e9
"""Seconds (about 31 years): beyond it a model might as well be pinned."""
KeepAlive = Annotated[
    float, Meta(ge=-1.0, le=KEEP_ALIVE_MAX, description="Seconds; 0 unloads now, -1 never")
]


def fold_seed(seed: int) -> int:
    """A 64-bit seed as the 32-bit seed llama.cpp's sampler takes."""
    return seed & 0xFFFFFFFF
