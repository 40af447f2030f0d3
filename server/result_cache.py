"""Finished responses (:class:`GenerationResult`), the interface every result cache offers
(:class:`ResultStore`), and the default: an in-process LRU bounded in bytes (:class:`ResultCache`).

The shared backend (Redis, for many replicas) is :mod:`server.cache.redis_cache`;
:func:`server.cache.factory.make_result_cache` picks one from the settings.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Protocol

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


class ResultStore(Protocol):
    """What the engine needs of a result cache: results by key, bounded in bytes, and claims.

    A claim says "this replica computes ``key``": a cache shared by several replicas lets one of them hold
    it, so the others wait for its result instead of computing it again (the policy and its guarantees:
    :mod:`server.cache.single_flight`). A cache private to one process grants every claim (the engine's
    queue already merges identical requests within a process). No method raises for a backend failure: a
    cache that cannot answer behaves as a miss and grants the claim.
    """

    remote: bool
    """Whether calls wait on the network (the event loop then makes them from a thread)."""

    @property
    def bytes(self) -> int:
        """Body bytes held (for a shared cache: as of this process's last write)."""
        ...

    def __len__(self) -> int:
        """Results held (for a shared cache: as of this process's last write)."""
        ...

    def get(self, key: str) -> GenerationResult | None:
        """The result stored under ``key`` (now the most recently used), or ``None``."""
        ...

    def put(self, key: str, result: GenerationResult) -> None:
        """Store ``result``, evicting least recently used results past the byte budget; a result larger
        than the whole budget is not stored."""
        ...

    def claim(self, key: str) -> bool:
        """``True``: this process computes ``key`` (call :meth:`release` when done, whatever the outcome);
        ``False``: another replica holds the claim (see :meth:`wait_for`)."""
        ...

    def release(self, key: str) -> None:
        """Give up one claim on ``key`` taken by :meth:`claim`; the result, if any, must be stored first."""
        ...

    def wait_for(self, key: str, timeout_s: float) -> Future[GenerationResult | None]:
        """A future for the result another replica is computing: the result once stored; ``None`` once
        the claim is gone without a result (it failed or died; compute it here); ``TimeoutError`` after
        ``timeout_s``."""
        ...

    def close(self) -> None:
        """Release this process's claims and connections."""
        ...


class ResultCache:
    """Thread-safe LRU of results, bounded by the total size of their bodies (one process, so every claim
    is granted)."""

    remote = False

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

    def claim(self, key: str) -> bool:
        return True

    def release(self, key: str) -> None:
        pass

    def wait_for(self, key: str, timeout_s: float) -> Future[GenerationResult | None]:
        gone: Future[GenerationResult | None] = Future()
        gone.set_result(None)  # no other replica: nobody else computes it
        return gone

    def close(self) -> None:
        pass
