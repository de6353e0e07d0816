"""Progress of long model operations (download, extract, convert): one callback shape.

Fetching a model can take minutes on a slow link, so every step reports through
`progress(stage, fraction, detail)`: `stage` is a short word ("download", "extract", "convert",
"done"), `fraction` runs 0..1 within the stage or is None when the total is unknown, and `detail`
is a human line (a file name, bytes so far). The daemon forwards these as events; the CLI draws
them (appliance.cli.progress).
"""

from __future__ import annotations

from collections.abc import Callable

from appliance.client.format import size

FetchProgress = Callable[[str, "float | None", str], None]
"""progress(stage, fraction or None, detail)."""


def no_progress(stage: str, fraction: float | None, detail: str) -> None:
    """The callback used when the caller passes none."""


def human_bytes(n: float) -> str:
    """Bytes as people read them, the same way the CLI and the console write sizes."""
    return size(n) if n else "0 B"
