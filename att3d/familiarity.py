"""Familiarity: how close a prompt is to what the model was trained on.

An amortized generator answers any embedding, but far from its training prompts it produces a generic
shape without saying so. The cosine similarity of a prompt's text embedding to the nearest training
prompt's embedding tracks output quality (r ≈ 0.7 on ShapesWorld), so each generation reports it, and a
per-model threshold turns it into familiar / unfamiliar.

- :class:`FamiliarityIndex` holds the training prompts' unit embeddings ``[N, D]`` (computed once per model
  load; :func:`training_embeddings` keeps the matrix in one cache file per prompt set) and answers the
  nearest training prompt of an embedding with one matrix-vector product.
- The threshold belongs to the model: ``familiarity_threshold`` in the checkpoint manifest's metadata
  (:func:`threshold_from_metadata`), else :data:`DEFAULT_THRESHOLD`. ``scripts/calibrate_familiarity.py``
  picks it from an evaluation.
- A blend of prompts is judged by its blended embedding (cosine similarity ignores its shorter norm).
- Familiarity is that of the prompt as written, even where the model reads a colour name as another
  (``att3d.color_terms``): a rewrite must not make an unknown object ("an apple": a colour name in the
  lexicon) look familiar.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file

from att3d.atomic import write_bytes_atomic
from att3d.checkpoint import save_tensors_atomic
from att3d.text import TextEncoder

THRESHOLD_KEY = "familiarity_threshold"
"""Manifest metadata key of a model's calibrated threshold."""
DEFAULT_THRESHOLD = 0.6
"""Threshold for a model whose manifest names none. An uncalibrated placeholder: MiniLM similarities of
reworded ShapesWorld prompts to their canonical form are mostly above it, of unrelated objects below it."""
CHUNK_PROMPTS = 256
"""Training prompts per encoder call while the index is built (bounds the encoder's padding memory)."""


@dataclass(frozen=True)
class Familiarity:
    """How familiar one prompt (or blend) is to a model."""

    similarity: float
    """Cosine similarity of its embedding to the nearest training prompt's, in [-1, 1]."""
    nearest: str
    """That training prompt."""
    threshold: float
    """The model's threshold: at or above it the prompt counts as familiar."""
    read_as: str = ""
    """The prompt as the model read it, when that differs from what was written (a colour name it was not
    trained on replaced by the nearest it was: ``att3d.color_terms``); empty otherwise."""

    @property
    def familiar(self) -> bool:
        return self.similarity >= self.threshold

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form: similarity, familiar, nearest, threshold, read_as."""
        return {
            "similarity": self.similarity,
            "familiar": self.familiar,
            "nearest": self.nearest,
            "threshold": self.threshold,
            "read_as": self.read_as,
        }


def threshold_from_metadata(metadata: Mapping[str, Any]) -> float:
    """The manifest's ``familiarity_threshold`` (a number in [-1, 1]), else :data:`DEFAULT_THRESHOLD`.

    Raises ``ValueError`` for a value that is present but no such number: a typo must not silently
    turn every prompt familiar or unfamiliar.
    """
    value = metadata.get(THRESHOLD_KEY)
    if value is None:
        return DEFAULT_THRESHOLD
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"metadata {THRESHOLD_KEY!r} must be a number in [-1, 1], got {value!r}")
    if not -1.0 <= value <= 1.0:
        raise ValueError(f"metadata {THRESHOLD_KEY!r} must be in [-1, 1], got {value}")
    return float(value)


class FamiliarityIndex:
    """The training prompts and their unit embeddings; nearest-prompt queries by cosine similarity."""

    def __init__(
        self, prompts: Sequence[str], embeddings: torch.Tensor, device: str | torch.device = "cpu"
    ) -> None:
        """
        Args:
            prompts: the training prompts (at least one).
            embeddings: ``[len(prompts), D]``, one row per prompt (normalized here).
            device: where the matrix lives: the model's, so a query embedding needs no copy (on a GPU a
                query against 10^4 prompts takes microseconds; on a CPU ~1-4 ms).
        """
        if len(prompts) == 0:
            raise ValueError("a familiarity index needs at least one training prompt")
        if embeddings.ndim != 2 or embeddings.shape[0] != len(prompts):
            raise ValueError(
                f"embeddings must be [{len(prompts)}, D] for {len(prompts)} prompts, "
                f"got {list(embeddings.shape)}"
            )
        self.prompts = list(prompts)
        self.matrix = torch.nn.functional.normalize(embeddings.detach().float().to(device), dim=1)

    @property
    def dim(self) -> int:
        return self.matrix.shape[1]

    def nearest(self, embedding: torch.Tensor) -> tuple[float, int]:
        """``(cosine similarity, index)`` of the training prompt nearest to ``embedding [D]``.

        A zero embedding (a blend of exactly opposite prompts) is similar to nothing: similarity 0.
        """
        if embedding.shape != (self.dim,):
            raise ValueError(f"embedding must be [{self.dim}], got {list(embedding.shape)}")
        query = embedding.detach().float().to(self.matrix.device)
        norm = float(query.norm())
        if norm == 0.0:
            return 0.0, 0
        similarities = self.matrix @ (query / norm)
        best = int(similarities.argmax())
        # Rounding can put a unit vector's self-similarity a hair above 1.
        return max(-1.0, min(1.0, float(similarities[best]))), best

    def familiarity(self, embedding: torch.Tensor, threshold: float) -> Familiarity:
        """:class:`Familiarity` of ``embedding [D]`` under ``threshold``."""
        similarity, index = self.nearest(embedding)
        return Familiarity(similarity=similarity, nearest=self.prompts[index], threshold=threshold)


# --------------------------------------------------------------------------------------------------
# Training embeddings, cached as one matrix per prompt set
# --------------------------------------------------------------------------------------------------


def prompt_set_key(encoder_id: str, prompts: Sequence[str]) -> str:
    """sha256 hex of (encoder id, prompts in order): names the cached matrix of a prompt set."""
    return hashlib.sha256(json.dumps([encoder_id, list(prompts)]).encode("utf-8")).hexdigest()


PROMPT_EMBEDDINGS_FILE = "prompt_embeddings.safetensors"
"""Optional file in a checkpoint folder: its training prompts' embeddings (float16), so a model trained on
thousands of wordings is ready at load instead of after a minute of text encoding on a fresh machine."""


def write_prompt_embeddings(checkpoint_dir: str | Path, encoder: TextEncoder, prompts: Sequence[str]) -> Path:
    """Store ``prompts``' embeddings beside a checkpoint (float16; keyed by encoder and prompt set)."""
    matrix = training_embeddings(encoder, prompts).to(torch.float16).contiguous()
    path = Path(checkpoint_dir) / PROMPT_EMBEDDINGS_FILE
    save_tensors_atomic(path, {"embeddings": matrix}, {"key": prompt_set_key(encoder.id, prompts)})
    return path


def copy_prompt_embeddings(source_dir: str | Path, checkpoint_dir: str | Path) -> Path | None:
    """Copy ``source_dir``'s :data:`PROMPT_EMBEDDINGS_FILE` (if any) into a checkpoint of the same prompts,
    e.g. a copy with another mesh config: the matrix depends only on the encoder and the prompts, and is
    checked against both when read. Returns the copy's path, ``None`` when the source has none."""
    source = Path(source_dir) / PROMPT_EMBEDDINGS_FILE
    if not source.is_file():
        return None
    return write_bytes_atomic(Path(checkpoint_dir) / PROMPT_EMBEDDINGS_FILE, source.read_bytes())


def _read_shipped(path: Path, encoder: TextEncoder, prompts: Sequence[str]) -> torch.Tensor | None:
    """The shipped matrix if it is this encoder's embedding of exactly these prompts, else ``None``."""
    if not path.is_file():
        return None
    try:
        with safe_open(path, framework="pt") as f:
            key = (f.metadata() or {}).get("key")
            matrix = f.get_tensor("embeddings")
    except (SafetensorError, OSError, ValueError, RuntimeError):
        return None
    if key != prompt_set_key(encoder.id, prompts) or matrix.shape != (len(prompts), encoder.dim):
        return None
    return matrix.float()


def training_embeddings(
    encoder: TextEncoder, prompts: Sequence[str], shipped: str | Path | None = None
) -> torch.Tensor:
    """Embeddings ``[N, D]`` of a model's training prompts.

    ``shipped``: a checkpoint's :data:`PROMPT_EMBEDDINGS_FILE`, used when it matches the encoder and the
    prompts (a stale or foreign file is ignored). Otherwise, with a caching encoder (one that has a
    ``cache_dir``, i.e. ``att3d.text.CachedEncoder``) the matrix is kept in
    ``<cache_dir>/prompt-sets/<key>.safetensors``: a model trained on 10^4 wordings then loads it from one
    file instead of 10^4. A missing or unreadable file is recomputed through the encoder.
    """
    if shipped is not None:
        matrix = _read_shipped(Path(shipped), encoder, prompts)
        if matrix is not None:
            return matrix
    cache_dir = getattr(encoder, "cache_dir", None)
    path = None
    if cache_dir is not None:
        path = Path(cache_dir) / "prompt-sets" / f"{prompt_set_key(encoder.id, prompts)}.safetensors"
        matrix = _read_matrix(path, len(prompts), encoder.dim)
        if matrix is not None:
            return matrix
    chunks = [
        encoder.encode(list(prompts[start : start + CHUNK_PROMPTS]))
        for start in range(0, len(prompts), CHUNK_PROMPTS)
    ]
    matrix = torch.cat(chunks).float() if chunks else torch.empty(0, encoder.dim)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_tensors_atomic(path, {"embeddings": matrix.contiguous()}, {"encoder": encoder.id})
    return matrix


def _read_matrix(path: Path, rows: int, dim: int) -> torch.Tensor | None:
    if not path.is_file():
        return None
    try:
        matrix = load_file(path)["embeddings"]
    except (SafetensorError, KeyError, OSError, ValueError, RuntimeError):
        return None
    return matrix if matrix.shape == (rows, dim) and matrix.dtype == torch.float32 else None
