"""The architecture in pyproject's import-linter contracts holds: layers point one way, only the
API imports litestar, the core never imports the console."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.conftest import require

REPO = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def test_every_import_contract_is_kept() -> None:
    require(LINT_IMPORTS.exists(), "import-linter is not installed (pip install import-linter)")
    done = subprocess.run(
        [str(LINT_IMPORTS)], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "BROKEN" not in done.stdout
