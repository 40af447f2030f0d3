"""What a user may ask for: the request-level resolution range (the prompt checks: tests/test_text.py)."""

from __future__ import annotations

import pytest

from att3d.limits import check_resolution


def test_resolution_range() -> None:
    assert check_resolution(16) == 16 and check_resolution(512) == 512
    for bad in (15, 513, 64.0, True):
        with pytest.raises(ValueError, match=r"resolution must be an integer in \[16, 512\]"):
            check_resolution(bad)
