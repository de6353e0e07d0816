"""The README's commands, .ci/run and the install script agree."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def readme_commands() -> list[str]:
    block = re.search(r"```sh\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    assert block is not None
    return block.group(1).strip().splitlines()


def test_ci_runs_the_readme_test_command() -> None:
    _runtime, test = readme_commands()
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert test in ci


def test_the_test_command_checks_lint_format_types_and_imports_before_pytest() -> None:
    script = (ROOT / "packaging" / "test.sh").read_text()
    steps = ['ruff" check', "format --check", 'mypy" appliance tui', 'lint-imports"', "-m pytest"]
    at = [script.index(step) for step in steps]
    assert at == sorted(at)


def test_both_install_modes_install_the_checkout_editable() -> None:
    script = (ROOT / "packaging" / "install.sh").read_text()
    installs = re.findall(r"pip install --progress-bar off (.+)$", script, re.M)
    ours = [args for args in installs if "llama-cpp-python" not in args]
    assert ours == ["-e '.[test]'", "-e ."]
