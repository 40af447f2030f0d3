"""The result cache: an LRU bounded by the bytes of its bodies."""

from __future__ import annotations

from server.result_cache import GenerationResult, ResultCache


def test_result_cache_is_an_lru_bounded_in_bytes():
    def result(n: int) -> GenerationResult:
        return GenerationResult(b"x" * n, "model/gltf-binary", "m", "h", 1.0)

    cache = ResultCache(max_bytes=100)
    cache.put("a", result(40))
    cache.put("b", result(40))
    assert cache.get("a") is not None  # "a" is now the most recently used
    cache.put("c", result(40))  # over budget: evicts the least recently used, "b"
    assert cache.get("b") is None and cache.get("a") is not None and cache.get("c") is not None
    assert cache.bytes == 80 and len(cache) == 2
    cache.put("huge", result(101))  # larger than the whole budget: not cached, nothing evicted
    assert cache.get("huge") is None and len(cache) == 2
    cache.put("a", result(10))  # replacing an entry accounts for the old size
    assert cache.bytes == 50
    assert ResultCache(0).get("a") is None
