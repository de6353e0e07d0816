"""Ids sort by creation and never repeat; pages say whether more follow."""

from __future__ import annotations

import pytest

from appliance.errors import InvalidRequest
from appliance.store.records import check_limit, new_id, page_of


def test_ids_are_unique_prefixed_and_sorted_by_creation() -> None:
    ids = [new_id("ses") for _ in range(2000)]
    assert len(set(ids)) == len(ids)
    assert ids == sorted(ids)
    assert all(i.startswith("ses_") and len(i) == 4 + 20 for i in ids)


def test_page_of_uses_the_extra_row_to_signal_more() -> None:
    more = page_of([1, 2, 3], 2, str)
    assert more.items == [1, 2] and more.next_after == "2"
    last = page_of([1, 2], 2, str)
    assert last.items == [1, 2] and last.next_after is None


def test_limits_are_bounded() -> None:
    assert check_limit(50) == 50
    for bad in (0, -1, 1001):
        with pytest.raises(InvalidRequest):
            check_limit(bad)
