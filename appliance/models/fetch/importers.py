"""Finding the GGUFs other tools already keep on this box: Ollama, LM Studio, the HF hub cache.

Each finder walks one tool's layout and yields `FoundModel`s (an id that says where the model came
from, the GGUF's path, and what the tool knows about it); `appliance.models.hub` registers them
in place, so gigabytes already on disk are served without a copy.

- Ollama (`OLLAMA_MODELS` or ~/.ollama/models): `manifests/REGISTRY/NAMESPACE/NAME/TAG` are OCI
  manifests; the layer of media type `application/vnd.ollama.image.model` is the GGUF under
  `blobs/sha256-HEX`, the `...image.params` layer is JSON whose `num_ctx` becomes the context
  size. The `...image.template` layer is a Go template that llama.cpp cannot run; the GGUF's own
  chat template is used instead. Ids: `ollama-NAME-TAG` (`ollama-NAMESPACE-NAME-TAG` outside
  the library namespace).
- LM Studio (~/.lmstudio/models or ~/.cache/lm-studio/models): `PUBLISHER/REPO/FILE.gguf`.
  Ids: `lmstudio-FILESTEM`. Vision projectors (`mmproj-*`) are skipped.
- The HF hub cache (`HF_HUB_CACHE`, `HF_HOME`/hub, or ~/.cache/huggingface/hub):
  `models--OWNER--REPO/snapshots/REV/FILE.gguf`. Ids: `hf-FILESTEM`.
Of a split GGUF only the first part is registered: llama.cpp finds the others beside it.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from appliance.errors import InvalidRequest

ORIGINS = ("ollama", "lmstudio", "hf-cache")
OLLAMA_MODEL = "application/vnd.ollama.image.model"
OLLAMA_PARAMS = "application/vnd.ollama.image.params"
_MAX_MANIFEST = 1 << 20
_SPLIT_PART = re.compile(r"-(\d{5})-of-\d{5}\.gguf$")


@dataclass(frozen=True)
class FoundModel:
    id: str
    path: Path
    origin: str
    """ollama, lmstudio or hf-cache."""
    name: str
    """The tool's own name for it (`llama3:8b`, `PUBLISHER/REPO/FILE`)."""
    context_size: int | None = None
    sha256: str | None = None
    """The digest the tool names the file by (Ollama's blobs), not recomputed at import."""


def model_id(*parts: str) -> str:
    """An id from name parts, made to fit the profile id pattern (lower case, at most 64)."""
    raw = "-".join(parts).lower()
    clean = re.sub(r"[^a-z0-9._-]+", "-", raw).strip("-._")
    return re.sub(r"-{2,}", "-", clean)[:64].rstrip("-._") or "model"


def default_root(origin: str) -> Path:
    """Where the tool keeps its models on this box (the first candidate that exists)."""
    home = Path.home()
    if origin == "ollama":
        env = os.environ.get("OLLAMA_MODELS")
        return Path(env).expanduser() if env else home / ".ollama" / "models"
    if origin == "lmstudio":
        for cand in (home / ".lmstudio" / "models", home / ".cache" / "lm-studio" / "models"):
            if cand.is_dir():
                return cand
        return home / ".lmstudio" / "models"
    if origin == "hf-cache":
        if os.environ.get("HF_HUB_CACHE"):
            return Path(os.environ["HF_HUB_CACHE"]).expanduser()
        if os.environ.get("HF_HOME"):
            return Path(os.environ["HF_HOME"]).expanduser() / "hub"
        return home / ".cache" / "huggingface" / "hub"
    raise InvalidRequest(
        f"unknown import origin {origin!r}; use one of {', '.join(ORIGINS)}", param="from"
    )


def find_models(origin: str, root: Path) -> list[FoundModel]:
    """Every GGUF the tool holds under `root`, one per id, in a stable order."""
    finder = {"ollama": _ollama, "lmstudio": _lmstudio, "hf-cache": _hf_cache}.get(origin)
    if finder is None:
        default_root(origin)  # raises the error that names the origins
    assert finder is not None
    if not root.is_dir():
        raise InvalidRequest(
            f"{root} is not a directory; give the folder where {origin} keeps its models",
            param="path",
        )
    seen: dict[str, FoundModel] = {}
    for found in finder(root):
        seen.setdefault(found.id, found)
    return list(seen.values())


def _is_first_part(path: Path) -> bool:
    m = _SPLIT_PART.search(path.name)
    return m is None or m.group(1) == "00001"


def _ollama(root: Path) -> Iterator[FoundModel]:
    manifests = root / "manifests"
    if not manifests.is_dir():
        return
    for manifest in sorted(p for p in manifests.rglob("*") if p.is_file()):
        rel = manifest.relative_to(manifests).parts
        if len(rel) != 4:  # REGISTRY/NAMESPACE/NAME/TAG
            continue
        _registry, namespace, name, tag = rel
        try:
            if manifest.stat().st_size > _MAX_MANIFEST:
                continue
            doc = json.loads(manifest.read_text())
            layers = {
                layer["mediaType"]: layer["digest"]
                for layer in doc.get("layers", [])
                if isinstance(layer, dict) and isinstance(layer.get("digest"), str)
            }
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            continue
        digest = layers.get(OLLAMA_MODEL, "")
        blob = root / "blobs" / digest.replace(":", "-")
        if not re.fullmatch(r"sha256:[0-9a-f]{64}", digest) or not blob.is_file():
            continue
        ctx = _ollama_num_ctx(root, layers.get(OLLAMA_PARAMS))
        parts = (name, tag) if namespace == "library" else (namespace, name, tag)
        yield FoundModel(
            id=model_id("ollama", *parts),
            path=blob,
            origin="ollama",
            name=f"{name}:{tag}" if namespace == "library" else f"{namespace}/{name}:{tag}",
            context_size=ctx,
            sha256=digest.removeprefix("sha256:"),
        )


def _ollama_num_ctx(root: Path, digest: str | None) -> int | None:
    if not digest or not re.fullmatch(r"sha256:[0-9a-f]{64}", digest):
        return None
    try:
        params = json.loads((root / "blobs" / digest.replace(":", "-")).read_text()[:65536])
    except (OSError, ValueError):
        return None
    ctx = params.get("num_ctx") if isinstance(params, dict) else None
    return ctx if isinstance(ctx, int) and ctx >= 16 else None


def _lmstudio(root: Path) -> Iterator[FoundModel]:
    for f in sorted(root.rglob("*.gguf")):
        if f.name.lower().startswith("mmproj") or not _is_first_part(f) or not f.is_file():
            continue
        yield FoundModel(
            id=model_id("lmstudio", f.stem),
            path=f,
            origin="lmstudio",
            name=str(f.relative_to(root)),
        )


def _hf_cache(root: Path) -> Iterator[FoundModel]:
    for repo in sorted(root.glob("models--*")):
        snapshots = repo / "snapshots"
        if not snapshots.is_dir():
            continue
        owner_repo = repo.name.removeprefix("models--").replace("--", "/")
        for f in sorted(snapshots.rglob("*.gguf")):
            if f.name.lower().startswith("mmproj") or not _is_first_part(f) or not f.is_file():
                continue
            yield FoundModel(
                id=model_id("hf", f.stem),
                path=f,
                origin="hf-cache",
                name=f"{owner_repo}/{f.relative_to(snapshots).parts[-1]}",
            )
