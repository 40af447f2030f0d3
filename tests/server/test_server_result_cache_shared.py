"""Replicas sharing one Redis result cache: a result computed by one is a hit on the other (same bytes,
same ETag), a key is computed once while its claimant lives, and a Redis that dies mid-run turns hits into
misses without failing a request.

Two engines (or two apps) in one process stand for two replicas; each has its own tiny generator with the
same weights, as replicas loading one checkpoint would."""

from __future__ import annotations

import logging
import subprocess
import sys
import threading

import pytest
from redis_server import redis_server  # noqa: F401 - the fixture
from server_fakes import isolated_environment, settings_for, started_client, tiny_generator

from att3d.generate import Generator
from server.engine import Engine
from server.errors import ServiceError
from server.mesh_spec import MeshSpec

pytest.importorskip("redis", reason="the redis package is missing (pip install -e '.[dev]')")

RES = 16


@pytest.fixture
def env(tmp_path):
    with isolated_environment(tmp_path):
        yield tmp_path


def _spec(prompt: str) -> MeshSpec:
    return MeshSpec("default", (prompt,), ((1.0,),), False, RES, "vertex", "glb")


class Counted:
    """Wraps ``Generator.blend`` to count the meshes a replica computes; can hold them, or fail some."""

    def __init__(self, generator: Generator, hold: bool = False, fail: str | None = None) -> None:
        self.calls: list[tuple[str, ...]] = []
        self.entered = threading.Event()
        self.release = threading.Event()
        if not hold:
            self.release.set()
        self.fail = fail
        self._blend = generator.blend
        generator.blend = self  # type: ignore[method-assign]

    def __call__(self, prompts, weights):
        self.calls.append(tuple(prompts))
        self.entered.set()
        assert self.release.wait(30), "test never released the replica"
        if self.fail in prompts:
            raise RuntimeError(f"this replica fails on {self.fail!r}")
        return self._blend(prompts, weights)


def _replica(env, url: str, **counted) -> tuple[Engine, Counted]:
    generator = tiny_generator()
    calls = Counted(generator, **counted)
    engine = Engine(settings_for(env, warmup=False, cache_url=url), {"default": generator})
    engine.start()
    assert engine.wait_ready(30)
    return engine, calls


def _sample(engine: Engine, name: str, **labels: str) -> float:
    return engine.metrics.registry.get_sample_value(name, labels) or 0.0


def test_a_result_computed_on_one_replica_is_a_hit_on_the_other(env, redis_server):  # noqa: F811
    (one, one_calls), (two, two_calls) = _replica(env, redis_server.url), _replica(env, redis_server.url)
    try:
        spec = _spec("a red cube")
        key = one.key(spec)
        assert key == two.key(spec)  # same weights, same request: same key and ETag everywhere
        computed = one.submit(spec).result(60)
        hit = two.lookup(key)
        assert hit == computed and hit.familiarity is not None
        assert two.submit(spec).result(10) == computed  # submit finds it too: nothing computed there
        assert (len(one_calls.calls), len(two_calls.calls)) == (1, 0)
        assert _sample(two, "att3d_cache_lookups_total", result="hit") == 1
        assert _sample(one, "att3d_cache_bytes") == len(computed.body)
        assert _sample(one, "att3d_cache_entries") == 1
    finally:
        one.stop()
        two.stop()


def test_two_apps_share_hits_and_etags_over_http(env, redis_server):  # noqa: F811
    settings = settings_for(env, warmup=False, cache_url=redis_server.url)
    body = {"prompt": "a blue sphere", "resolution": RES}
    with (
        started_client(settings, {"default": tiny_generator()}) as first,
        started_client(settings, {"default": tiny_generator()}) as second,
    ):
        miss = first.post("/v1/generate", json=body)
        hit = second.post("/v1/generate", json=body)
        assert (miss.status_code, hit.status_code) == (200, 200)
        assert (miss.headers["x-cache"], hit.headers["x-cache"]) == ("miss", "hit")
        assert hit.headers["etag"] == miss.headers["etag"] and hit.content == miss.content
        for header in ("x-prompt-familiarity", "x-prompt-nearest", "x-generation-ms", "x-model-hash"):
            assert hit.headers[header] == miss.headers[header]
        again = second.post("/v1/generate", json=body, headers={"If-None-Match": miss.headers["etag"]})
        assert again.status_code == 304


def test_a_key_another_replica_computes_is_waited_for_not_computed(env, redis_server):  # noqa: F811
    (one, one_calls), (two, two_calls) = (
        _replica(env, redis_server.url, hold=True),
        _replica(env, redis_server.url),
    )
    try:
        spec = _spec("a green cone")
        computing = one.submit(spec)
        assert one_calls.entered.wait(30)  # replica one claimed the key and is inside its computation
        waiting = [two.submit(spec), two.submit(spec)]  # two requests on replica two, at the same time
        assert not any(future.done() for future in waiting)
        one_calls.release.set()
        result = computing.result(60)
        assert [future.result(30) for future in waiting] == [result, result]
        assert (len(one_calls.calls), len(two_calls.calls)) == (1, 0)  # computed once, across replicas
        assert _sample(two, "att3d_cache_waits_total", outcome="result") == 2
    finally:
        one.stop()
        two.stop()


def test_a_waiter_takes_over_when_the_claimant_fails_or_dies(env, redis_server):  # noqa: F811
    (one, one_calls), (two, two_calls) = (
        _replica(env, redis_server.url, hold=True, fail="a yellow torus"),
        _replica(env, redis_server.url),
    )
    try:
        failing = one.submit(_spec("a yellow torus"))
        assert one_calls.entered.wait(30)
        taken_over = two.submit(_spec("a yellow torus"))
        one_calls.release.set()
        with pytest.raises(ServiceError, match="generation failed"):
            failing.result(60)
        assert taken_over.result(60).body  # errors are not shared: replica two computed it itself
        # A replica that died holding a claim: its claim expires, then a waiter computes the key.
        dead = two.key(_spec("a purple cube"))
        redis_server.client.set(f"att3d:claim:{dead}", "a dead replica", px=500)
        assert two.submit(_spec("a purple cube")).result(60).body
        assert sorted(two_calls.calls) == [("a purple cube",), ("a yellow torus",)]
        assert _sample(two, "att3d_cache_waits_total", outcome="taken_over") == 2
    finally:
        one.stop()
        two.stop()


def test_redis_dying_mid_run_turns_hits_into_misses_not_failures(env, redis_server, caplog):  # noqa: F811
    settings = settings_for(env, warmup=False, cache_url=redis_server.url)
    body = {"prompt": "a red cube", "resolution": RES}
    with started_client(settings, {"default": tiny_generator()}) as client:
        assert client.post("/v1/generate", json=body).headers["x-cache"] == "miss"
        assert client.post("/v1/generate", json=body).headers["x-cache"] == "hit"
        redis_server.stop()
        with caplog.at_level(logging.WARNING, logger="server.cache.redis_cache"):
            for prompt in ("a red cube", "a blue sphere", "a red cube"):
                response = client.post("/v1/generate", json={**body, "prompt": prompt})
                assert response.status_code == 200 and response.headers["x-cache"] == "miss"
        assert client.get("/readyz").status_code == 200  # readiness does not depend on Redis
        metrics = client.get("/metrics").text
        errors = [line for line in metrics.splitlines() if line.startswith("att3d_cache_errors_total")]
        assert errors and sum(float(line.split()[-1]) for line in errors) >= 1
        assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 1


def test_the_default_service_never_imports_redis():
    code = "import sys, server.app, server.engine; assert 'redis' not in sys.modules, 'redis imported'"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
