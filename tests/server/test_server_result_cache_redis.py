"""The Redis result cache against a real ``redis-server``: storage format, byte budget and LRU order shared
by replicas, claims, failures answered as misses, and the settings that select it.

Engines and apps sharing one Redis (hits across replicas, one computation per key):
test_server_result_cache_shared.py."""

from __future__ import annotations

import json
import logging
import time
from concurrent.futures import Future

import pytest
from redis_server import free_port, redis_server  # noqa: F401 - the fixture

from att3d.familiarity import Familiarity
from server.cache import codec
from server.result_cache import GenerationResult
from server.settings import ServerSettings, SettingsError

redis_cache = pytest.importorskip("server.cache.redis_cache", reason="the redis package is missing")
RedisResultCache = redis_cache.RedisResultCache

FAMILIAR = Familiarity(similarity=0.8125, nearest="a red cübe ✓", threshold=0.6)
READ_AS = Familiarity(similarity=0.5, nearest="a red cube", threshold=0.6, read_as="a red cübe")


def result(n: int, familiarity: Familiarity | None = None) -> GenerationResult:
    return GenerationResult(
        bytes(range(256)) * (n // 256) + b"x" * (n % 256), "model/gltf-binary", "m", "h", 1.5, familiarity
    )


@pytest.fixture
def caches(redis_server):  # noqa: F811
    """``make(**options)`` -> a RedisResultCache on the test's server (closed afterwards)."""
    made = []

    def make(max_bytes: int = 100, **options) -> RedisResultCache:
        cache = RedisResultCache(redis_server.url, max_bytes, **options)
        made.append(cache)
        return cache

    yield make
    for cache in made:
        cache.close()


# ---- the stored form ------------------------------------------------------------------------------


@pytest.mark.parametrize("familiarity", [FAMILIAR, READ_AS, None])
def test_codec_round_trips_every_field(familiarity):
    original = GenerationResult(
        b"\x00glTF\xff" * 3, "model/gltf-binary", "default", "ab" * 32, 12.345678901, familiarity
    )
    header = codec.encode_header(original)
    assert b"glTF" not in header  # the body is stored apart, raw
    assert codec.decode(header, original.body) == original


def test_codec_reads_entries_written_before_read_as():
    original = GenerationResult(b"mesh", "model/gltf-binary", "default", "ab" * 32, 1.0, FAMILIAR)
    fields = json.loads(codec.encode_header(original))
    del fields["familiarity"]["read_as"]
    assert codec.decode(json.dumps(fields).encode(), b"mesh") == original


@pytest.mark.parametrize(
    ("header", "message"),
    [
        (b"\x80\x04\x95", "not JSON"),  # a pickle is never unpickled
        (b'{"v": 2}', "format version 1"),
        (b'{"v":1,"media_type":"m","model":"m","model_hash":"h","generation_ms":"1"}', "'generation_ms'"),
        (b'{"v":1,"media_type":3,"model":"m","model_hash":"h","generation_ms":1}', "'media_type'"),
        (
            b'{"v":1,"media_type":"m","model":"m","model_hash":"h","generation_ms":1,"familiarity":{"nearest":"a"}}',
            "'similarity'",
        ),
    ],
)
def test_codec_rejects_what_it_did_not_write(header, message):
    with pytest.raises(ValueError, match=message):
        codec.decode(header, b"body")


# ---- results and the byte budget ------------------------------------------------------------------


def test_round_trip_through_redis_keeps_bytes_and_headers(caches, redis_server):  # noqa: F811
    cache = caches(max_bytes=10_000)
    stored = result(1000, FAMILIAR)
    cache.put("k1", stored)
    assert cache.get("k1") == stored and cache.get("k1").body == stored.body
    assert caches(max_bytes=10_000).get("k1") == stored  # another replica reads the same entry
    assert cache.get("absent") is None
    assert (cache.bytes, len(cache)) == (1000, 1)
    names = {name.decode() for name in redis_server.client.keys("*")}
    assert names == {"att3d:result:k1", "att3d:lru", "att3d:sizes", "att3d:bytes", "att3d:tick"}


def test_budget_evicts_the_least_recently_used_across_replicas(caches, redis_server):  # noqa: F811
    one, two = caches(max_bytes=100), caches(max_bytes=100)
    one.put("a", result(40))
    one.put("b", result(40))
    assert two.get("a") is not None  # a use on another replica counts: "a" is now the most recent
    one.put("c", result(40))  # over budget: evicts "b", the least recently used
    assert one.get("b") is None and two.get("a") is not None and two.get("c") is not None
    assert (one.bytes, len(one)) == (80, 2)
    assert not redis_server.client.exists("att3d:result:b")  # its body is gone too
    one.put("huge", result(101))  # larger than the whole budget: not stored, nothing evicted
    assert one.get("huge") is None and (one.get("a"), one.get("c")) != (None, None)
    one.put("a", result(10))  # replacing an entry accounts for the old size
    assert (one.bytes, len(one)) == (50, 2)
    assert int(redis_server.client.get("att3d:bytes")) == 50
    for n in range(10):  # many puts: the sum never passes the budget
        two.put(f"n{n}", result(30))
        assert two.bytes <= 100
    assert (two.bytes, len(two)) == (90, 3)
    assert [two.get(f"n{n}") is not None for n in (6, 7, 8, 9)] == [False, True, True, True]


def test_prefixes_keep_deployments_apart(caches):
    blue, green = caches(prefix="blue:"), caches(prefix="green:")
    blue.put("k", result(10))
    assert green.get("k") is None and blue.get("k") is not None
    assert green.claim("k") and blue.claim("k")


def test_an_unreadable_entry_is_a_miss(caches, redis_server):  # noqa: F811
    errors: list[str] = []
    cache = caches(on_error=errors.append)
    redis_server.client.hset("att3d:result:k", mapping={"header": b"not json", "body": b"x"})
    redis_server.client.zadd("att3d:lru", {"k": 1})
    assert cache.get("k") is None and errors == ["decode"]


# ---- claims ---------------------------------------------------------------------------------------


def test_one_claim_per_key_until_released(caches, redis_server):  # noqa: F811
    here, there = caches(), caches()
    assert here.claim("k") and not there.claim("k")
    assert here.claim("k")  # a second request here joins the first (the engine's queue merges them)
    here.release("k")
    assert not there.claim("k")  # one of the two requests here still computes
    here.release("k")
    assert not redis_server.client.exists("att3d:claim:k")
    assert there.claim("k") and not here.claim("k")
    here.release("k")  # not ours: nothing happens
    assert redis_server.client.exists("att3d:claim:k")


def test_a_claim_is_renewed_while_held(caches, redis_server):  # noqa: F811
    holder = caches(claim_ttl_s=1.0)
    assert holder.claim("k")
    time.sleep(2.5)  # more than twice its TTL
    assert 0 < redis_server.client.pttl("att3d:claim:k") <= 1000
    holder.close()  # a closed replica gives its claims back
    assert not redis_server.client.exists("att3d:claim:k")


def test_a_waiter_gets_the_result_or_hears_the_claim_is_gone(caches):
    here, there = caches(), caches()
    assert here.claim("k1") and here.claim("k2") and here.claim("k3")
    landed, failed, slow = there.wait_for("k1", 30), there.wait_for("k2", 30), there.wait_for("k3", 0.2)
    assert there.wait_for("k1", 30) is landed  # waiters for one key share one future
    here.put("k1", result(10, FAMILIAR))
    here.release("k1")
    here.release("k2")  # released without a result: the request failed here
    assert landed.result(10) == result(10, FAMILIAR)
    assert failed.result(10) is None
    with pytest.raises(TimeoutError):
        slow.result(10)  # k3 is still claimed when the wait ends


def test_a_dead_claimants_claim_expires(caches, redis_server):  # noqa: F811
    redis_server.client.set("att3d:claim:k", "a replica that died", px=300)
    waiter = caches()
    assert not waiter.claim("k")
    assert waiter.wait_for("k", 30).result(10) is None  # expired: take it over
    assert waiter.claim("k")


# ---- failures -------------------------------------------------------------------------------------


def test_unreachable_redis_is_a_miss_counted_and_logged_once(caplog):
    pytest.importorskip("redis")
    errors: list[str] = []
    cache = RedisResultCache(f"redis://127.0.0.1:{free_port()}/0", 100, on_error=errors.append, retry_s=0.0)
    try:
        with caplog.at_level(logging.WARNING, logger="server.cache.redis_cache"):
            assert cache.get("k") is None
            cache.put("k", result(10))
            assert cache.claim("k")  # nobody to coordinate with: compute here
            assert cache.wait_for("k", 30).result(10) is None
            cache.release("k")
        assert errors[:3] == ["get", "put", "claim"] and "wait" in errors
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1 and "answering as misses" in warnings[0].getMessage()
    finally:
        cache.close()


def test_after_a_failure_redis_is_left_alone_for_retry_s(redis_server):  # noqa: F811
    errors: list[str] = []
    cache = RedisResultCache(redis_server.url, 100, on_error=errors.append, retry_s=3600.0)
    try:
        cache.put("k", result(10))
        redis_server.stop()
        assert cache.get("k") is None and cache.get("k") is None
        assert errors == ["get"]  # the second get did not try
    finally:
        cache.close()


# ---- settings -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://127.0.0.1:6379", "must be redis://"),
        ("127.0.0.1:6379", "must be redis://"),
        ("redis://", "names no host"),
        ("redis://127.0.0.1:99999/0", "invalid port"),
        ("redis://127.0.0.1:port/0", "invalid port"),
        ("redis://127.0.0.1:6379/zero", "database must be a number"),
        ("redis://127.0.0.1:6379?db=x", "database must be a number"),
        ("unix://", "names no socket path"),
    ],
)
def test_a_malformed_cache_url_stops_start_up_naming_the_variable(url, message):
    with pytest.raises(SettingsError, match=message) as caught:
        ServerSettings.from_env({"ATT3D_CACHE_URL": url})
    assert "ATT3D_CACHE_URL" in str(caught.value)


def test_a_bad_cache_url_is_not_echoed_with_its_password():
    with pytest.raises(SettingsError, match="invalid port") as caught:
        ServerSettings.from_env({"ATT3D_CACHE_URL": "redis://:s3cret@cache.internal:port/0"})
    assert "s3cret" not in str(caught.value)


@pytest.mark.parametrize(
    "url", ["", "redis://127.0.0.1:6379/0", "rediss://:pw@cache.internal", "unix:///run/r.sock"]
)
def test_well_formed_cache_urls_are_accepted(url):
    assert ServerSettings.from_env({"ATT3D_CACHE_URL": url}).cache_url == url


def test_cache_timings_must_be_positive():
    with pytest.raises(SettingsError, match="cache_claim_ttl_s must be > 0"):
        ServerSettings.from_env({"ATT3D_CACHE_CLAIM_TTL_S": "0"})
    with pytest.raises(SettingsError, match="cache_prefix must not be empty"):
        ServerSettings(cache_prefix="")


def test_the_default_cache_is_in_process():
    from server.cache.factory import make_result_cache
    from server.metrics import Metrics
    from server.result_cache import ResultCache

    cache = make_result_cache(ServerSettings(), Metrics())
    assert isinstance(cache, ResultCache) and not cache.remote and cache.claim("k")
    disabled = make_result_cache(ServerSettings(cache_url="redis://127.0.0.1:1/0", cache_bytes=0), Metrics())
    assert isinstance(disabled, ResultCache)  # no budget: no cache, no Redis
    gone: Future = cache.wait_for("k", 1)
    assert gone.result(0) is None
