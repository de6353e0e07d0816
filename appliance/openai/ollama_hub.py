"""Ollama's `/api/pull` and `/api/delete`, served by the model hub (appliance.models.hub).

`ollama pull NAME` (and every Ollama client's `pull`) becomes a hub pull: `hf.co/OWNER/REPO[:QUANT]`
(Ollama's own spelling for Hugging Face GGUFs; QUANT defaults to Q4_K_M as in Ollama) is an
`hf:` pull, any other name an `ollama:` pull from the registry (`OLLAMA_REGISTRY`, default
registry.ollama.ai). The model id is the name as the other Ollama routes look it up
(appliance.openai.ollama.model_id), so `ollama run NAME` works the moment the pull ends. The
progress is Ollama's NDJSON: `pulling manifest`, then `pulling DIGEST` lines with `total` and
`completed`, `verifying sha256 digest`, `success`. `/api/delete` unloads the model, removes its
profile and its file in the model store.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from appliance.errors import ApplianceError, InvalidRequest
from appliance.models.hub import ModelHub, PullRequest
from appliance.openai.ollama import OllamaModelRequest, model_id

POLL_S = 0.25
HF_HOSTS = ("hf.co/", "huggingface.co/")


class OllamaPullRequest(OllamaModelRequest):
    """`/api/pull`: `model` (or `name`); `insecure` is accepted (a loopback registry is plain
    http anyway); `stream` false answers once, at the end."""

    insecure: bool = False
    stream: bool = True


def pull_source(name: str) -> str:
    """The hub source of an Ollama model name."""
    for host in HF_HOSTS:
        if name.startswith(host):
            repo, _, quant = name.removeprefix(host).partition(":")
            if quant.lower() == "latest" or not quant:
                quant = "Q4_K_M"
            return f"hf:{repo}:{quant}"
    return f"ollama:{name}"


class OllamaHub:
    def __init__(self, hub: ModelHub) -> None:
        self.hub = hub

    async def pull(self, req: OllamaPullRequest) -> AsyncIterator[dict[str, Any]]:
        """Start the pull (refusals raise before the first line) and yield its progress lines."""
        name = req.model or req.name
        if not name:
            raise InvalidRequest("`model` is required: the name to pull", param="model")
        mid = model_id(name)
        if mid in self.hub.catalog.ids():
            return _already(mid)
        status = await self.hub.pull(PullRequest(source=pull_source(name), id=mid))
        return self._progress(status.id)

    async def _progress(self, pull_id: str) -> AsyncIterator[dict[str, Any]]:
        yield {"status": "pulling manifest"}
        while True:
            s = self.hub.get_pull(pull_id)
            if s.state == "downloading":
                yield {
                    "status": f"pulling {s.model}",
                    "digest": s.model,
                    "total": s.total or 0,
                    "completed": s.bytes,
                }
            elif s.state == "verifying":
                yield {"status": "verifying sha256 digest"}
            elif s.state == "done":
                yield {"status": "writing manifest"}
                yield {"status": "success"}
                return
            else:
                raise ApplianceError(f"pull {s.state}: {s.error}")
            await asyncio.sleep(POLL_S)

    async def delete(self, req: OllamaModelRequest) -> None:
        await self.hub.remove(req.model_id(), files=True)


async def _already(mid: str) -> AsyncIterator[dict[str, Any]]:
    yield {"status": "pulling manifest"}
    yield {"status": "success"}
