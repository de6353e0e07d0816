"""The Python sandbox driver's own JSON (it imports no json module): what it writes is the JSON
the daemon reads, and what it reads is what the daemon writes, for every string a program's
output, a cell's repr or a path can hold."""

from __future__ import annotations

import json
import runpy
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import appliance.sandbox.repl as repl

DRIVER = Path(repl.__file__).with_name("python_driver.py")

VALUES: list[Any] = [
    {"ready": True, "pid": 12},
    {"ok": False, "result": None, "interrupted": True, "maxrss_kb": 10240},
    {"result": 'quote " backslash \\ slash / tab \t newline \n nul \x00 bell \x07'},
    {"result": "héllo wörld ✓ 漢字 \U0001f600"},
    {"result": "lone surrogate \ud800 and \udfff"},
    {"nested": [1, -2, 3.5, [], {}, ["a", {"b": None}]]},
    {"big": 2**70, "small": -(2**63)},
]


@pytest.fixture(scope="module")
def driver(monkeypatch_module: pytest.MonkeyPatch) -> dict[str, Any]:
    monkeypatch_module.setattr(sys, "argv", ["python_driver.py", "99"])
    return runpy.run_path(str(DRIVER), run_name="python_driver_under_test")


@pytest.fixture(scope="module")
def monkeypatch_module() -> Any:
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


@pytest.mark.parametrize("value", VALUES)
def test_what_the_driver_writes_is_json(driver: dict[str, Any], value: Any) -> None:
    assert json.loads(driver["dumps"](value)) == value


@pytest.mark.parametrize("value", VALUES)
def test_what_the_driver_reads_is_json(driver: dict[str, Any], value: Any) -> None:
    for text in (json.dumps(value), json.dumps(value, ensure_ascii=False, indent=2)):
        assert driver["loads"](text) == value


def test_a_driver_start_imports_no_json_re_traceback_or_contextlib() -> None:
    done = subprocess.run(
        [sys.executable, "-S", "-X", "importtime", str(DRIVER), "99"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    imported = {
        line.rsplit("|", 1)[1].strip()
        for line in done.stderr.splitlines()
        if line.startswith("import time:") and "|" in line
    }
    assert "_json" in imported, done.stderr[-2000:]
    assert not imported & {"json", "re", "traceback", "contextlib", "enum"}, sorted(imported)
