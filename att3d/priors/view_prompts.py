"""View-dependent prompting for text-only priors (DreamFusion §3.2).

A text-to-image model conditioned on "a red cube" alone pulls every view towards the object's most
photographed side (the "Janus" problem). Appending a suffix chosen from the camera ("a red cube, back
view") tells the prior which side it is looking at.

Views and their order (the second axis of the ``[N, V, L, D]`` tensors built here):

=== ================== =========================================================
 0  ``, front view``    ``|azimuth| < 45°``
 1  ``, side view``     ``45° <= |azimuth| <= 135°``
 2  ``, back view``     ``|azimuth| > 135°``
 3  ``, overhead view`` ``elevation > 60°`` (takes precedence over azimuth)
=== ================== =========================================================

Azimuth follows ``att3d.cameras``: 0° is a camera on the +x axis looking at the origin, and we define the
object's *front* as the side facing +x; azimuths are wrapped to ``[-180°, 180°)`` first.

:class:`PromptEmbeddingCache` sits in front of a prior's tokenizer and text encoder: each exact string
(prompt + suffix) is encoded once, and the negative prompt gives the unconditional branch of guidance.
View-conditioned priors (the ShapesWorld prior) read the cameras directly and do not use this module.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from att3d.cameras import Cameras
from att3d.priors.base import PriorCondition

VIEW_SUFFIXES: tuple[str, ...] = (", front view", ", side view", ", back view", ", overhead view")
"""Suffix appended to the prompt for each view, indexed by :func:`view_index`."""

FRONT, SIDE, BACK, OVERHEAD = range(len(VIEW_SUFFIXES))

OVERHEAD_ELEVATION = 60.0
"""Cameras above this elevation (degrees) get the overhead suffix."""
FRONT_AZIMUTH = 45.0
"""Cameras with ``|azimuth|`` below this (degrees) see the front."""
BACK_AZIMUTH = 135.0
"""Cameras with ``|azimuth|`` above this (degrees) see the back."""


class PromptEmbeddingCache:
    """Token embeddings computed once per exact string and kept (on the prior's device) for reuse.

    ``encode`` maps a list of strings to ``[N, L, D]`` (a prior's tokenizer + text encoder) or is ``None``
    when the prior was built without a text encoder; then only strings put in with :meth:`insert` (e.g.
    from an on-disk cache) are available.
    """

    def __init__(self, encode: Callable[[list[str]], Tensor] | None, negative_prompt: str = "") -> None:
        self._encode = encode
        self._cache: dict[str, Tensor] = {}
        self.negative_prompt = negative_prompt
        """The unconditional branch of guidance uses this prompt (empty: plain unconditional)."""

    def __len__(self) -> int:
        return len(self._cache)

    def __call__(self, prompts: list[str]) -> Tensor:
        """Embeddings ``[len(prompts), L, D]``; only strings not seen before reach the text encoder."""
        if isinstance(prompts, str) or not isinstance(prompts, (list, tuple)) or not prompts:
            raise ValueError(f"prompts must be a non-empty list of strings, got {prompts!r}")
        missing = list(dict.fromkeys(p for p in prompts if p not in self._cache))
        if missing:
            if self._encode is None:
                raise RuntimeError(
                    f"no text encoder is loaded and {len(missing)} prompt(s) are not cached, e.g. "
                    f"{missing[0]!r}; load the prior with its text encoder or insert() the embeddings"
                )
            for text, embedding in zip(missing, self._encode(missing), strict=True):
                self._cache[text] = embedding
        return torch.stack([self._cache[p] for p in prompts])

    def insert(self, prompts: list[str], embeddings: Tensor) -> None:
        """Add precomputed embeddings ``[len(prompts), L, D]`` (e.g. read from disk)."""
        if embeddings.dim() != 3 or embeddings.shape[0] != len(prompts):
            raise ValueError(
                f"embeddings must be [{len(prompts)}, L, D] for {len(prompts)} prompts, "
                f"got {tuple(embeddings.shape)}"
            )
        for text, embedding in zip(prompts, embeddings, strict=True):
            self._cache[text] = embedding

    def unconditional(self, batch: int) -> Tensor:
        """The negative-prompt embedding repeated ``[batch, L, D]``."""
        return self([self.negative_prompt]).expand(batch, -1, -1)

    def release_encoder(self) -> None:
        """Encode the negative prompt, then drop the encoder (frees the text model's memory)."""
        self.unconditional(1)
        self._encode = None


def wrap_azimuth(azimuth: Tensor) -> Tensor:
    """Azimuth in degrees wrapped to ``[-180, 180)``."""
    return torch.remainder(azimuth + 180.0, 360.0) - 180.0


def view_index(
    cameras: Cameras,
    overhead_elevation: float = OVERHEAD_ELEVATION,
    front_azimuth: float = FRONT_AZIMUTH,
    back_azimuth: float = BACK_AZIMUTH,
) -> Tensor:
    """Index into :data:`VIEW_SUFFIXES` for every camera, ``long [B]`` on the cameras' device."""
    if not 0.0 <= front_azimuth <= back_azimuth <= 180.0:
        raise ValueError(
            f"need 0 <= front_azimuth <= back_azimuth <= 180, got front_azimuth={front_azimuth}, "
            f"back_azimuth={back_azimuth}"
        )
    abs_azimuth = wrap_azimuth(cameras.azimuth.float()).abs()
    index = torch.full_like(abs_azimuth, SIDE, dtype=torch.long)
    index[abs_azimuth < front_azimuth] = FRONT
    index[abs_azimuth > back_azimuth] = BACK
    index[cameras.elevation.float() > overhead_elevation] = OVERHEAD
    return index


def view_prompts(prompt: str) -> list[str]:
    """``prompt`` with every view suffix appended, in :data:`VIEW_SUFFIXES` order."""
    return [prompt + suffix for suffix in VIEW_SUFFIXES]


def encode_view_prompts(encode_text: Callable[[list[str]], Tensor], prompts: list[str]) -> Tensor:
    """Token embeddings ``[N, V, L, D]`` of every prompt with every view suffix.

    ``encode_text`` is a prior's :meth:`~att3d.priors.base.DiffusionPrior.encode_text`; the hub priors
    cache per full string, i.e. per (prompt, suffix), so calling this every step costs nothing.
    """
    if isinstance(prompts, str) or not prompts:
        raise ValueError(f"prompts must be a non-empty list of strings, got {prompts!r}")
    flat = [text for prompt in prompts for text in view_prompts(prompt)]
    embeddings = encode_text(flat)
    return embeddings.reshape(len(prompts), len(VIEW_SUFFIXES), *embeddings.shape[1:])


def condition_for(prompt_embeddings_by_view: Tensor, cameras: Cameras) -> PriorCondition:
    """Per-image text conditioning chosen by each camera's view.

    ``prompt_embeddings_by_view`` is ``[V, L, D]`` (one prompt for the whole batch) or ``[B, V, L, D]``
    (one prompt, or a blend of prompts' embeddings, per image). Returns ``text`` ``[B, L, D]``.
    """
    embeddings = prompt_embeddings_by_view
    batch, views = len(cameras), len(VIEW_SUFFIXES)
    if embeddings.dim() == 3:
        embeddings = embeddings.unsqueeze(0).expand(batch, -1, -1, -1)
    if embeddings.dim() != 4 or embeddings.shape[0] != batch or embeddings.shape[1] != views:
        raise ValueError(
            f"prompt_embeddings_by_view must be [{views}, L, D] or [{batch}, {views}, L, D] for "
            f"{batch} cameras, got {tuple(prompt_embeddings_by_view.shape)}"
        )
    index = view_index(cameras).to(embeddings.device)
    text = embeddings[torch.arange(batch, device=embeddings.device), index]
    return PriorCondition(text=text, cameras=cameras)
