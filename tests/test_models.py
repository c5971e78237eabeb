"""Pure checks shared by every boundary."""

from __future__ import annotations

import pytest

from orchestrator.models import is_sha


@pytest.mark.parametrize(
    "value, ok",
    [
        ("a" * 40, True),
        ("0123456789abcdef0123456789abcdef01234567", True),
        ("A" * 40, False),  # git prints lowercase; uppercase would make two ids for one commit
        ("a" * 39, False),
        ("a" * 41, False),
        ("a" * 40 + "\n", False),
        ("g" * 40, False),
        ("", False),
        (None, False),
        (40, False),
    ],
)
def test_is_sha(value: object, ok: bool) -> None:
    assert is_sha(value) is ok
