"""Which blob an `ollama:NAME[:TAG]` pull takes, from an Ollama (OCI Distribution) registry.

Ollama publishes a model as an OCI-style manifest at `/v2/NAMESPACE/NAME/manifests/TAG`: the
layer of media type `application/vnd.ollama.image.model` is the GGUF, `...image.params` is JSON
of run parameters (its `num_ctx` becomes the profile's context size) and `...image.template` is a
Go template, which llama.cpp cannot run (the GGUF's own chat template is used). The GGUF blob is
downloaded from `/v2/NAMESPACE/NAME/blobs/DIGEST` by `appliance.models.fetch.download` and
verified against that digest, so a tampered mirror cannot substitute another file.
"""

from __future__ import annotations

import json
import re

import httpx

from appliance.models.fetch.hf_files import RemoteFile
from appliance.models.fetch.sources import PullSource
from appliance.models.fetch.wheels import ModelFetchError

MODEL = "application/vnd.ollama.image.model"
PARAMS = "application/vnd.ollama.image.params"
ACCEPT = (
    "application/vnd.docker.distribution.manifest.v2+json,"
    " application/vnd.oci.image.manifest.v1+json"
)
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
_MAX_PARAMS = 65536


def resolve_ollama(src: PullSource, http: httpx.Client) -> list[RemoteFile]:
    """Read the manifest and return the model blob to download (blocking)."""
    base = f"{src.registry}/v2/{src.location}"
    name = f"{src.location.removeprefix('library/')}:{src.tag}"
    try:
        resp = http.get(f"{base}/manifests/{src.tag}", headers={"Accept": ACCEPT})
    except httpx.TransportError as exc:
        raise ModelFetchError(
            f"cannot reach the Ollama registry {src.registry} ({exc}); set OLLAMA_REGISTRY to a"
            " mirror, or import what a local ollama holds with"
            " `appliance models import --from ollama`"
        ) from exc
    if resp.status_code == 404:
        raise ModelFetchError(f"{src.registry} has no model {name}; check the name and tag")
    if resp.status_code >= 400:
        raise ModelFetchError(f"{src.registry} answered HTTP {resp.status_code} for {name}")
    try:
        layers = {
            layer["mediaType"]: layer
            for layer in resp.json().get("layers", [])
            if isinstance(layer, dict) and isinstance(layer.get("mediaType"), str)
        }
    except (ValueError, AttributeError) as exc:
        raise ModelFetchError(f"the manifest of {name} is not JSON: {exc}") from exc
    model = layers.get(MODEL)
    if model is None or not _DIGEST.match(str(model.get("digest"))):
        raise ModelFetchError(f"the manifest of {name} has no GGUF layer ({MODEL})")
    size = model.get("size")
    return [
        RemoteFile(
            name=f"{src.location.replace('/', '-')}-{src.tag}.gguf",
            url=f"{base}/blobs/{model['digest']}",
            size=size if isinstance(size, int) and size > 0 else None,
            sha256=str(model["digest"]).removeprefix("sha256:"),
            context_size=_num_ctx(http, base, layers.get(PARAMS)),
        )
    ]


def _num_ctx(http: httpx.Client, base: str, layer: dict[str, object] | None) -> int | None:
    digest = str((layer or {}).get("digest"))
    if not _DIGEST.match(digest):
        return None
    try:
        resp = http.get(f"{base}/blobs/{digest}")
        params = json.loads(resp.content[:_MAX_PARAMS]) if resp.status_code == 200 else None
    except (httpx.HTTPError, ValueError):
        return None
    ctx = params.get("num_ctx") if isinstance(params, dict) else None
    return ctx if isinstance(ctx, int) and ctx >= 16 else None
