"""A :class:`GenerationResult` as stored outside the process: a JSON header and the raw body bytes.

Nothing is unpickled: a stored entry is data another process (or anyone with access to the Redis) wrote,
so decoding checks every field's type and rejects the rest with ``ValueError`` (the cache then treats the
entry as a miss).
"""

from __future__ import annotations

import json
import math
from typing import Any

from att3d.familiarity import Familiarity
from server.result_cache import GenerationResult

FORMAT_VERSION = 1
"""Bumped when the header changes; an entry of another version is a miss (replicas of two releases may
share one Redis during a rolling update)."""


def encode_header(result: GenerationResult) -> bytes:
    """Everything but the body, as compact UTF-8 JSON."""
    familiarity = result.familiarity
    header = {
        "v": FORMAT_VERSION,
        "media_type": result.media_type,
        "model": result.model,
        "model_hash": result.model_hash,
        "generation_ms": result.generation_ms,
        "familiarity": None
        if familiarity is None
        else {
            "similarity": familiarity.similarity,
            "nearest": familiarity.nearest,
            "threshold": familiarity.threshold,
            "read_as": familiarity.read_as,
        },
    }
    return json.dumps(header, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def decode(header: bytes, body: bytes) -> GenerationResult:
    """The result stored as ``header`` + ``body``; ``ValueError`` if the header is not one we wrote."""
    try:
        fields = json.loads(header)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"result header is not JSON: {err}") from None
    if not isinstance(fields, dict) or fields.get("v") != FORMAT_VERSION:
        raise ValueError(f"result header is not format version {FORMAT_VERSION}")
    if not isinstance(body, bytes):
        raise ValueError("result body is not bytes")
    familiarity = fields.get("familiarity")
    return GenerationResult(
        body=body,
        media_type=_text(fields, "media_type"),
        model=_text(fields, "model"),
        model_hash=_text(fields, "model_hash"),
        generation_ms=_number(fields, "generation_ms"),
        familiarity=None
        if familiarity is None
        else Familiarity(
            similarity=_number(familiarity, "similarity"),
            nearest=_text(familiarity, "nearest"),
            threshold=_number(familiarity, "threshold"),
            read_as=_text(familiarity, "read_as") if "read_as" in familiarity else "",  # absent: older entry
        ),
    )


def _text(fields: Any, name: str) -> str:
    value = fields.get(name) if isinstance(fields, dict) else None
    if not isinstance(value, str):
        raise ValueError(f"result header field {name!r} is not a string")
    return value


def _number(fields: Any, name: str) -> float:
    value = fields.get(name) if isinstance(fields, dict) else None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"result header field {name!r} is not a finite number")
    return float(value)
