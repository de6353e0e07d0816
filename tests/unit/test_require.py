"""require(): a skip on a developer's machine, a failure where APPLIANCE_STRICT_SKIPS=1 (CI)."""

from __future__ import annotations

import pytest

import tests.conftest
from tests.conftest import require


def test_a_met_requirement_neither_skips_nor_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tests.conftest, "STRICT_SKIPS", True)
    require(True, "unused")


def test_an_unmet_requirement_skips_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tests.conftest, "STRICT_SKIPS", False)
    with pytest.raises(pytest.skip.Exception, match="bwrap is unusable"):
        require(False, "bwrap is unusable")


def test_an_unmet_requirement_fails_under_strict_skips(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tests.conftest, "STRICT_SKIPS", True)
    with pytest.raises(pytest.fail.Exception, match=r"bwrap is unusable.*APPLIANCE_STRICT_SKIPS"):
        require(False, "bwrap is unusable")
