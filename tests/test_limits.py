"""What a user may ask for: the request-level resolution range and the prompt check."""

from __future__ import annotations

import pytest

from att3d.limits import PromptError, check_resolution, validate_prompt


def test_resolution_range() -> None:
    assert check_resolution(16) == 16 and check_resolution(512) == 512
    for bad in (15, 513, 64.0, True):
        with pytest.raises(ValueError, match=r"resolution must be an integer in \[16, 512\]"):
            check_resolution(bad)


def test_validate_prompt_strips():
    assert validate_prompt("  a red cube\n") == "a red cube"
    assert validate_prompt("x" * 1000) == "x" * 1000


@pytest.mark.parametrize(
    ("prompt", "message"),
    [
        (None, "prompt must be a string, got NoneType"),
        (42, "prompt must be a string, got int"),
        (b"a red cube", "prompt must be a string, got bytes"),
        ("", "prompt is empty"),
        (" \t\n ", "prompt contains only whitespace"),
        ("x" * 1001, r"prompt is too long: 1001 characters \(limit 1000\)"),
        # A lone UTF-16 surrogate (JSON allows "\udfff") is no text: no encoder can take it.
        ("x \udfff", r"prompt is not valid Unicode: lone surrogate U\+DFFF at character 2"),
        ("\ud83d a red cube", r"lone surrogate U\+D83D at character 0"),
    ],
)
def test_validate_prompt_errors(prompt, message):
    with pytest.raises(PromptError, match=message):
        validate_prompt(prompt)
    assert issubclass(PromptError, ValueError)


def test_validate_prompt_custom_limit():
    with pytest.raises(PromptError, match=r"too long: 11 characters \(limit 10\)"):
        validate_prompt("  a red cubes  ", max_chars=10)
