"""Limits on what a user may ask for (prompt length, marching-cubes resolution) and their checks.

Torch-free on purpose: the HTTP request schemas (``server.schemas``) validate with these without loading
the model stack.
"""

from __future__ import annotations

RESOLUTION_RANGE = (16, 512)
"""Smallest and largest marching-cubes resolution a generation request may ask for (CLI ``-r``, HTTP
``resolution``; memory and time grow with its cube). A ``MeshConfig`` itself takes any ``resolution >= 2``."""

DEFAULT_MAX_PROMPT_CHARS = 1000
"""Prompts longer than this (after stripping) are rejected by :func:`validate_prompt`."""


def check_resolution(resolution: object) -> int:
    """``resolution``, if it is an integer in :data:`RESOLUTION_RANGE` (the CLI's ``-r``; over HTTP the
    request schema declares the same range)."""
    lo, hi = RESOLUTION_RANGE
    if not isinstance(resolution, int) or isinstance(resolution, bool) or not lo <= resolution <= hi:
        raise ValueError(f"resolution must be an integer in [{lo}, {hi}], got {resolution!r}")
    return resolution


class PromptError(ValueError):
    """A prompt is not usable (wrong type, empty, too long or not valid Unicode); the message says which."""


def validate_prompt(prompt: object, max_chars: int = DEFAULT_MAX_PROMPT_CHARS) -> str:
    """Return ``prompt`` stripped of surrounding whitespace, or raise :class:`PromptError`."""
    if not isinstance(prompt, str):
        raise PromptError(f"prompt must be a string, got {type(prompt).__name__}")
    text = prompt.strip()
    if not text:
        raise PromptError("prompt is empty" if not prompt else "prompt contains only whitespace")
    if len(text) > max_chars:
        raise PromptError(f"prompt is too long: {len(text)} characters (limit {max_chars})")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:  # only lone surrogates fail: every other code point encodes
        where = f"U+{ord(text[err.start]):04X} at character {err.start}"
        raise PromptError(f"prompt is not valid Unicode: lone surrogate {where}") from None
    return text
