"""Which GGUF files an `hf:` pull takes, with their sizes and LFS sha256, via huggingface_hub.

`hf:OWNER/REPO/FILE.gguf` names one file; `hf:OWNER/REPO:QUANT` picks the repository's GGUFs
whose name carries QUANT (`Q4_K_M` matches `model-Q4_K_M.gguf`, case-insensitive, as a whole
word). A split GGUF (`NAME-00001-of-00003.gguf`) is every part of it; two different files for
one quant are an error that lists them, so the user names the one they want.

The listing is huggingface_hub's `list_repo_tree` against `HF_ENDPOINT` (default
huggingface.co), with `HF_TOKEN` for gated repositories; the bytes come through
`appliance.models.fetch.download` from the file's resolve URL, so an hf: pull resumes, is
verified against the LFS sha256 and can be cancelled like a url: pull.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from appliance.errors import InvalidRequest
from appliance.models.fetch.fetcher import unreachable_reason
from appliance.models.fetch.sources import PullSource
from appliance.models.fetch.wheels import ModelFetchError

SPLIT = re.compile(r"^(?P<stem>.+)-(?P<part>\d{5})-of-(?P<count>\d{5})\.gguf$")


@dataclass(frozen=True)
class RemoteFile:
    """One file to download: where from, how big, and the digest it must have."""

    name: str
    """Path in the repository (hf) or the last URL segment (url)."""
    url: str
    size: int | None
    sha256: str | None
    context_size: int | None = None
    """What the source says the context should be (an Ollama params layer's num_ctx)."""


def hf_endpoint() -> str:
    return (os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")


def hf_headers() -> dict[str, str]:
    token = os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN")
    return {"Authorization": f"Bearer {token}"} if token else {}


def _quant_matches(name: str, quant: str) -> bool:
    base = name.rsplit("/", 1)[-1]
    return re.search(rf"(?<![A-Za-z0-9]){re.escape(quant)}(?![A-Za-z0-9])", base, re.I) is not None


def pick_files(listing: dict[str, tuple[int, str | None]], src: PullSource) -> list[str]:
    """The repository paths a pull takes from a listing of {path: (size, sha256)}."""
    ggufs = sorted(p for p in listing if p.endswith(".gguf"))
    if src.file:
        if src.file not in listing:
            raise ModelFetchError(
                f"{src.location} has no file {src.file!r}; its GGUF files are: "
                f"{', '.join(ggufs) or 'none'}"
            )
        chosen = [src.file]
    else:
        chosen = [p for p in ggufs if _quant_matches(p, src.quant)]
        if not chosen:
            raise InvalidRequest(
                f"{src.location} has no GGUF for quant {src.quant!r}; its GGUF files are: "
                f"{', '.join(ggufs) or 'none'}. Pick one with hf:{src.location}/FILE",
                param="source",
            )
    first = SPLIT.match(chosen[0].rsplit("/", 1)[-1])
    if first is not None:  # every part of the split, whichever part was named
        stem = chosen[0][: len(chosen[0]) - len(chosen[0].rsplit("/", 1)[-1])] + first["stem"]
        count = int(first["count"])
        parts = [f"{stem}-{i:05d}-of-{count:05d}.gguf" for i in range(1, count + 1)]
        missing = [p for p in parts if p not in listing]
        if missing:
            raise ModelFetchError(f"{src.location} lacks parts of a split GGUF: {missing}")
        chosen = parts
    if len(chosen) > 1 and first is None:
        raise InvalidRequest(
            f"quant {src.quant!r} matches several files in {src.location}: {', '.join(chosen)};"
            f" name one with hf:{src.location}/FILE",
            param="source",
        )
    return chosen


def resolve_hf(src: PullSource) -> list[RemoteFile]:
    """List the repository and return the files the pull takes (blocking)."""
    try:
        from huggingface_hub import HfApi, RepoFile, hf_hub_url
        from huggingface_hub import errors as hf_errors
    except ImportError as exc:
        raise ModelFetchError(
            "hf: pulls need the huggingface_hub package; install it with"
            " `pip install huggingface_hub`, or pull the file's url: instead"
        ) from exc
    endpoint = hf_endpoint()
    unreachable = unreachable_reason(endpoint)
    if unreachable:
        raise ModelFetchError(
            f"cannot reach {endpoint} ({unreachable}); set HF_ENDPOINT to a mirror, or copy the"
            " GGUF to this box and register it with `appliance models add PATH`"
        )
    api = HfApi(endpoint=endpoint)  # it reads HF_TOKEN itself
    try:
        listing = {
            f.path: (int(f.size), f.lfs.sha256 if f.lfs is not None else None)
            for f in api.list_repo_tree(src.location, recursive=True)
            if isinstance(f, RepoFile)
        }
    except hf_errors.RepositoryNotFoundError as exc:
        raise ModelFetchError(
            f"{src.location} was not found on {endpoint}; check the repository name (gated"
            " models need HF_TOKEN)"
        ) from exc
    except hf_errors.HfHubHTTPError as exc:
        raise ModelFetchError(f"{endpoint} refused the listing of {src.location}: {exc}") from exc
    return [
        RemoteFile(
            name=p,
            url=hf_hub_url(src.location, p, endpoint=endpoint),
            size=listing[p][0],
            sha256=listing[p][1],
        )
        for p in pick_files(listing, src)
    ]
