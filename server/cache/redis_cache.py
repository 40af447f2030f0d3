"""The result cache shared by replicas: one Redis, byte-bounded LRU, claims so a key is computed once.

Layout under ``prefix`` (``att3d:`` by default, so one Redis can serve several deployments):

- ``{prefix}result:{key}`` — a hash: ``header`` (JSON, :mod:`server.cache.codec`) and ``body`` (raw bytes);
- ``{prefix}lru`` — a sorted set of keys scored by a use counter ``{prefix}tick`` (not a clock: replicas'
  clocks differ), the least recently used first;
- ``{prefix}sizes`` (a hash key → body bytes) and ``{prefix}bytes`` (their sum);
- ``{prefix}claim:{key}`` — the token of the replica computing ``key``, expiring after ``claim_ttl_s``.

Budget: a put and its evictions are one Lua script, so the sum stays exact under concurrent replicas and
never exceeds ``max_bytes`` after a put (bodies only, like the in-process LRU; Redis's own overhead per
entry, a few hundred bytes, comes on top). A get is one script too: it reads and marks the entry used.
Scripts touch keys they compute (the evicted entries), so this needs a single Redis (or a primary with
replicas), not Redis Cluster; and Redis must not evict these keys itself (``maxmemory-policy noeviction`` or
no ``maxmemory``): the budget is what bounds them.

Failures never fail a request: every Redis call that raises is counted (``on_error(op)``: the
``att3d_cache_errors_total`` metric), logged once per outage, and answered as a miss (a get), a no-op (a
put) or a granted claim (compute here). After a failure Redis is left alone for ``retry_s`` so that a
dead Redis costs nothing per request, not one connect timeout each.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from server.cache import codec
from server.result_cache import GenerationResult

logger = logging.getLogger(__name__)

_GET = """
local found = redis.call('HMGET', KEYS[1], 'header', 'body')
if not found[1] or not found[2] then return false end
redis.call('ZADD', KEYS[2], 'XX', redis.call('INCR', KEYS[3]), ARGV[1])
return found
"""
# KEYS: result, lru, sizes, bytes, tick. ARGV: key, header, body, budget, result-key prefix.
_PUT = """
local size = string.len(ARGV[3])
local budget = tonumber(ARGV[4])
if size <= budget then
  local old = redis.call('HGET', KEYS[3], ARGV[1])
  if old then redis.call('DECRBY', KEYS[4], old) end
  redis.call('HSET', KEYS[1], 'header', ARGV[2], 'body', ARGV[3])
  redis.call('HSET', KEYS[3], ARGV[1], size)
  redis.call('ZADD', KEYS[2], redis.call('INCR', KEYS[5]), ARGV[1])
  local total = redis.call('INCRBY', KEYS[4], size)
  while total > budget do
    local oldest = redis.call('ZPOPMIN', KEYS[2])
    if #oldest == 0 then redis.call('SET', KEYS[4], 0) break end
    local freed = tonumber(redis.call('HGET', KEYS[3], oldest[1]) or '0')
    redis.call('HDEL', KEYS[3], oldest[1])
    redis.call('DEL', ARGV[5] .. oldest[1])
    total = redis.call('DECRBY', KEYS[4], freed)
  end
end
return {tonumber(redis.call('GET', KEYS[4]) or '0'), redis.call('ZCARD', KEYS[2])}
"""
# Only the claimant's token may extend or delete a claim (another replica may hold it by now).
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

RETRY_S = 2.0
"""After a failed Redis call, how long every call is answered as a miss without trying Redis."""
POLL_S = 0.05
"""How often a replica waiting for another one's result looks for it."""


@dataclass
class _Wait:
    future: Future[GenerationResult | None]
    deadline: float


class RedisResultCache:
    """A :class:`server.result_cache.ResultStore` in Redis, shared by every replica using the same URL and
    prefix. Thread-safe. Claims are kept alive and waits resolved by one background thread."""

    remote = True

    def __init__(
        self,
        url: str,
        max_bytes: int,
        *,
        prefix: str = "att3d:",
        timeout_s: float = 0.5,
        claim_ttl_s: float = 10.0,
        on_error: Callable[[str], None] = lambda op: None,
        retry_s: float = RETRY_S,
        poll_s: float = POLL_S,
    ) -> None:
        self.max_bytes = max_bytes
        self.prefix = prefix
        self.claim_ttl_s = claim_ttl_s
        self.retry_s = retry_s
        self.poll_s = poll_s
        self._on_error = on_error
        # One quick retry (a pooled connection the server closed), no backoff: the breaker handles outages.
        self._redis = redis.Redis.from_url(
            url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s, retry=Retry(NoBackoff(), 1)
        )
        self._get_script = self._redis.register_script(_GET)
        self._put_script = self._redis.register_script(_PUT)
        self._renew_script = self._redis.register_script(_RENEW)
        self._release_script = self._redis.register_script(_RELEASE)
        self._token = uuid.uuid4().hex  # this replica's claims
        self._bytes = 0
        self._entries = 0
        self._lock = threading.Lock()
        self._down_until = 0.0  # monotonic time before which Redis is not tried
        self._failing = False
        self._held: dict[str, int] = {}  # key -> claims taken here and not yet released
        self._waits: dict[str, _Wait] = {}
        self._wake = threading.Event()
        self._closed = False
        self._thread = threading.Thread(target=self._keep, name="att3d-cache-claims", daemon=True)
        self._thread.start()

    # ---- results ---------------------------------------------------------------------------------

    @property
    def bytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return self._entries

    def get(self, key: str) -> GenerationResult | None:
        with self._guard("get") as ok:
            if ok:
                keys = [self._result_key(key), self.prefix + "lru", self.prefix + "tick"]
                found = self._get_script(keys=keys, args=[key])
                if not found:
                    return None
                try:
                    return codec.decode(found[0], found[1])
                except ValueError as err:  # another release's entry, or not ours: a miss
                    self._on_error("decode")
                    logger.debug("result cache entry %s unreadable: %s", key, err)
        return None

    def put(self, key: str, result: GenerationResult) -> None:
        if len(result.body) > self.max_bytes:
            return
        with self._guard("put") as ok:
            if ok:
                p = self.prefix
                keys = [self._result_key(key), p + "lru", p + "sizes", p + "bytes", p + "tick"]
                args = [key, codec.encode_header(result), result.body, self.max_bytes, p + "result:"]
                total, entries = self._put_script(keys=keys, args=args)
                self._bytes, self._entries = int(total), int(entries)

    # ---- claims ----------------------------------------------------------------------------------

    def claim(self, key: str) -> bool:
        with self._lock:
            if key in self._held:  # computing it here already: the engine's queue merges the two
                self._held[key] += 1
                return True
        ttl_ms = int(self.claim_ttl_s * 1000)
        with self._guard("claim") as ok:
            if ok and not self._redis.set(self._claim_key(key), self._token, nx=True, px=ttl_ms):
                return False
            if ok:
                with self._lock:
                    self._held[key] = self._held.get(key, 0) + 1
                self._wake.set()  # the keeper renews it from now on
        return True  # claimed, or Redis unreachable: compute here, uncoordinated

    def release(self, key: str) -> None:
        with self._lock:
            count = self._held.get(key, 0)
            if count == 0:
                return
            if count > 1:
                self._held[key] = count - 1
                return
            del self._held[key]
        with self._guard("release") as ok:
            if ok:
                self._release_script(keys=[self._claim_key(key)], args=[self._token])

    def wait_for(self, key: str, timeout_s: float) -> Future[GenerationResult | None]:
        with self._lock:
            wait = self._waits.get(key)
            if wait is None:
                wait = self._waits[key] = _Wait(Future(), time.monotonic() + timeout_s)
            wait.deadline = max(wait.deadline, time.monotonic() + timeout_s)
        self._wake.set()
        return wait.future

    def close(self) -> None:
        """Stop the keeper, release every claim held here, resolve waits with ``None``, disconnect."""
        self._closed = True
        self._wake.set()
        self._thread.join(5.0)
        with self._lock:
            held, self._held = list(self._held), {}
        with self._guard("release") as ok:
            if ok and held:
                pipe = self._redis.pipeline(transaction=False)
                for key in held:
                    self._release_script(keys=[self._claim_key(key)], args=[self._token], client=pipe)
                pipe.execute()
        self._settle_all(None)
        self._redis.close()

    # ---- the keeper thread: renews claims held here, resolves waits for other replicas' -----------

    def _keep(self) -> None:
        next_renew = 0.0
        while not self._closed:
            with self._lock:
                holding, waiting = bool(self._held), bool(self._waits)
            now = time.monotonic()
            try:
                if holding and now >= next_renew:
                    self._renew()
                    next_renew = now + self.claim_ttl_s / 3
                if waiting:
                    self._poll()
            except Exception:  # a bug here must not end the thread that every wait depends on
                logger.exception("result cache: the claims thread failed; going on")
            sleeps = ([next_renew - now] if holding else []) + ([self.poll_s] if waiting else [])
            self._wake.wait(max(min(sleeps), 0.0) if sleeps else None)
            self._wake.clear()

    def _renew(self) -> None:
        with self._lock:
            held = list(self._held)
        ttl_ms = int(self.claim_ttl_s * 1000)
        with self._guard("renew") as ok:
            if ok and held:
                pipe = self._redis.pipeline(transaction=False)
                for key in held:
                    self._renew_script(keys=[self._claim_key(key)], args=[self._token, ttl_ms], client=pipe)
                pipe.execute()

    def _poll(self) -> None:
        with self._lock:
            waits = list(self._waits.items())
        if not waits:
            return
        flags: list[int] | None = None
        with self._guard("wait") as ok:
            if ok:
                # One transaction, so a claim released just after its result was stored is never seen
                # as "no claim and no result".
                pipe = self._redis.pipeline(transaction=True)
                for key, _ in waits:
                    pipe.exists(self._claim_key(key))
                    pipe.exists(self._result_key(key))
                flags = pipe.execute()
        if flags is None:  # Redis unreachable: every waiter computes for itself
            self._settle_all(None)
            return
        now = time.monotonic()
        for i, (key, wait) in enumerate(waits):
            claimed, stored = flags[2 * i], flags[2 * i + 1]
            if stored:
                self._settle(key, self.get(key))  # None if evicted since: computed here then
            elif not claimed:
                self._settle(key, None)  # the claimant failed, gave up or died
            elif now >= wait.deadline:
                self._settle(key, TimeoutError(f"no result for {key} within the wait"))

    def _settle(self, key: str, outcome: GenerationResult | BaseException | None) -> None:
        with self._lock:
            wait = self._waits.pop(key, None)
        if wait is None or wait.future.done():
            return
        if isinstance(outcome, BaseException):
            wait.future.set_exception(outcome)
        else:
            wait.future.set_result(outcome)  # its callbacks (the engine's) run on this thread

    def _settle_all(self, outcome: None) -> None:
        with self._lock:
            keys = list(self._waits)
        for key in keys:
            self._settle(key, outcome)

    # ---- failures --------------------------------------------------------------------------------

    @contextmanager
    def _guard(self, op: str) -> Iterator[bool]:
        """Yields whether to try Redis now; a Redis error inside is counted, logged once per outage and
        swallowed (the caller's fallback after the ``with`` block then answers)."""
        if time.monotonic() < self._down_until:
            yield False
            return
        try:
            yield True
        except (redis.RedisError, OSError) as err:
            self._on_error(op)
            with self._lock:
                first, self._failing = not self._failing, True
                self._down_until = time.monotonic() + self.retry_s
            if first:
                logger.warning(
                    "result cache: Redis failed (%s: %s); answering as misses, retrying every %g s",
                    type(err).__name__,
                    err,
                    self.retry_s,
                )
            return
        if self._failing:
            with self._lock:
                recovered, self._failing = self._failing, False
            if recovered:
                logger.info("result cache: Redis is reachable again")

    def _result_key(self, key: str) -> str:
        return f"{self.prefix}result:{key}"

    def _claim_key(self, key: str) -> str:
        return f"{self.prefix}claim:{key}"
