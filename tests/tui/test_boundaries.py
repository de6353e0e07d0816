"""The core stays usable without the console: nothing in `appliance` imports textual or `tui`,
except `appliance tui`, which imports the console inside its command function."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.conftest import require

REPO = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def test_import_linter_contract_core_without_tui_is_kept() -> None:
    require(LINT_IMPORTS.exists(), "import-linter is not installed (pip install import-linter)")
    done = subprocess.run(
        [str(LINT_IMPORTS), "--contract", "core-without-tui"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "KEPT" in done.stdout


def test_daemon_api_and_cli_load_without_textual() -> None:
    code = (
        "import sys\n"
        "import appliance.app, appliance.api.app, appliance.cli.main\n"
        "appliance.cli.main.build_parser()  # registers every subcommand, `tui` included\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in ('textual', 'tui'))\n"
        "print(loaded)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]", f"the core pulled in the console: {done.stdout}"
