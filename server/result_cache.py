"""Finished responses (:class:`GenerationResult`) and the in-memory LRU that keeps them, bounded in bytes."""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass

from att3d.familiarity import Familiarity


@dataclass(frozen=True)
class GenerationResult:
    """A finished response body and what its headers say about it."""

    body: bytes
    media_type: str
    model: str
    model_hash: str
    generation_ms: float
    """Model-worker time spent producing ``body`` (the original time for a cached result)."""
    familiarity: Familiarity | None = None
    """How familiar the prompt (or blend) is to the model; ``None`` for a walk of frames or a model
    without training prompts. Kept with the body, so a cached answer reports it too."""


class ResultCache:
    """Thread-safe LRU of results, bounded by the total size of their bodies."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[str, GenerationResult] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    @property
    def bytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: str) -> GenerationResult | None:
        with self._lock:
            result = self._items.get(key)
            if result is not None:
                self._items.move_to_end(key)
            return result

    def put(self, key: str, result: GenerationResult) -> None:
        size = len(result.body)
        if size > self.max_bytes:  # would evict everything and still not fit
            return
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._bytes -= len(old.body)
            self._items[key] = result
            self._bytes += size
            while self._bytes > self.max_bytes:
                _, evicted = self._items.popitem(last=False)
                self._bytes -= len(evicted.body)
