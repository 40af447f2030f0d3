"""Picks the result cache from the settings: the in-process LRU, or Redis when ``cache_url`` is set."""

from __future__ import annotations

import logging
from urllib.parse import urlsplit

from server.metrics import Metrics
from server.result_cache import ResultCache, ResultStore
from server.settings import ServerSettings

logger = logging.getLogger(__name__)


def make_result_cache(settings: ServerSettings, metrics: Metrics) -> ResultStore:
    """:class:`ResultCache` (one process) unless ``settings.cache_url`` names a Redis and the budget is not
    0; then :class:`server.cache.redis_cache.RedisResultCache`, which connects on first use (so the
    service starts, and ``/readyz`` turns ready, whether Redis is up or not)."""
    cache = _make(settings, metrics)
    metrics.cache_bytes.set_function(lambda: cache.bytes)
    metrics.cache_entries.set_function(lambda: len(cache))
    return cache


def _make(settings: ServerSettings, metrics: Metrics) -> ResultStore:
    if not settings.cache_url or settings.cache_bytes == 0:
        return ResultCache(settings.cache_bytes)
    from server.cache.redis_cache import RedisResultCache  # the redis package is an optional extra

    parts = urlsplit(settings.cache_url)  # logged without its password
    where = parts.path if parts.scheme == "unix" else f"{parts.hostname}:{parts.port or 6379}{parts.path}"
    logger.info(
        "result cache: Redis at %s://%s, prefix %r, %d bytes",
        parts.scheme,
        where,
        settings.cache_prefix,
        settings.cache_bytes,
    )
    return RedisResultCache(
        settings.cache_url,
        settings.cache_bytes,
        prefix=settings.cache_prefix,
        timeout_s=settings.cache_timeout_s,
        claim_ttl_s=settings.cache_claim_ttl_s,
        on_error=lambda op: metrics.cache_errors.labels(op).inc(),
    )
