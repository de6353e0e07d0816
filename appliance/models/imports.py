"""Import: register the GGUFs Ollama, LM Studio or the Hugging Face cache already hold, in place.

`appliance.models.fetch.importers` finds them (and names them after where they came from); this
module reads each new one's GGUF header in a thread (kind, trained context) and then, on the event
loop where every other catalog change happens, writes a profile whose source is the file where
it lies: no copy. A model whose id exists is skipped, saying whether it is the same file (already
imported) or another one (the id is taken), so running an import again finds nothing new.

A folder named in the request (not the tool's default one) must not be, or lie in, a sandbox
workspace or a shared temporary directory (appliance.models.registration); neither may a file
found in any folder, after its symlinks are resolved.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import msgspec

from appliance.errors import ApplianceError
from appliance.models.catalog import ModelCatalog
from appliance.models.fetch.importers import FoundModel, default_root, find_models
from appliance.models.gguf_info import MAX_PROFILE_CONTEXT, describe_gguf
from appliance.models.profile import ModelProfile
from appliance.models.registration import RegistrationPolicy


class ImportRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """`POST /api/models/import`: register the GGUFs another tool keeps on this box, in place."""

    source: str = msgspec.field(name="from")
    """ollama, lmstudio or hf-cache."""
    path: str | None = None
    """The tool's models folder (default: where the tool keeps them for the daemon's user)."""


async def import_models(
    catalog: ModelCatalog, policy: RegistrationPolicy, req: ImportRequest
) -> dict[str, Any]:
    """Find the tool's GGUFs and read their headers in a thread, then register them here on
    the event loop, where every other change to the catalog happens."""
    root, found = await asyncio.to_thread(_scan, policy, req, set(catalog.ids()))
    imported: list[dict[str, Any]] = []
    skipped: list[dict[str, str]] = []
    for m, info in found:
        if m.id in catalog.ids():
            prof = catalog.get(m.id)
            real = os.path.realpath(m.path)
            same = os.path.realpath(os.path.expanduser(prof.source)) == real
            why = "already imported" if same else f"the id is taken (source {prof.source})"
            skipped.append({"id": m.id, "path": str(m.path), "reason": why})
        elif info is None or isinstance(info, str):
            why = info or "removed while the import ran; import again"
            skipped.append({"id": m.id, "path": str(m.path), "reason": why})
        else:
            ctx = m.context_size or min(info.context_length or 2048, MAX_PROFILE_CONTEXT)
            catalog.add(
                ModelProfile(
                    id=m.id,
                    source=str(m.path),
                    kind=info.kind,
                    context_size=max(ctx, 16),
                    description=f"imported from {m.origin}: {m.name}",
                    origin=m.origin,
                    sha256=m.sha256,
                )
            )
            imported.append(
                {"id": m.id, "path": str(m.path), "kind": info.kind, "origin": m.origin}
            )
    return {"from": req.source, "root": str(root), "imported": imported, "skipped": skipped}


def _scan(
    policy: RegistrationPolicy, req: ImportRequest, known: set[str]
) -> tuple[Path, list[tuple[FoundModel, Any]]]:
    """(root, [(found model, its GgufDescription or why it cannot be imported)]), blocking."""
    root = Path(req.path).expanduser() if req.path else default_root(req.source)
    trusted = not req.path  # the daemon's own default folders, not one a client names
    policy.check_import(root, trusted=trusted)
    out: list[tuple[FoundModel, Any]] = []
    for m in find_models(req.source, root):
        if m.id in known:
            out.append((m, None))  # decided on the event loop: already imported, or taken
            continue
        try:
            policy.check_import(m.path, trusted=trusted)
            out.append((m, describe_gguf(m.path)))
        except ApplianceError as exc:
            out.append((m, exc.message))
    return root, out
