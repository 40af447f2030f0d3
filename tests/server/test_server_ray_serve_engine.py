"""``server.ray_serve.remote_engine.RemoteEngine`` behind the real app (``create_app(engine_factory=...)``),
with a scripted stand-in for the Serve handle: the routes' answers when a replica answers, refuses, dies or
does not answer. No Ray cluster; marked ``ray`` because the engine raises on Ray's own exception types."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from server_fakes import isolated_environment, settings_for, tiny_generator

pytestmark = pytest.mark.ray  # Ray is imported inside the tests: the plain run collects this module

RES = 16


class _Response:
    """What ``handle.method.remote(...)`` returns: awaitable once, cancellable."""

    def __init__(self, outcome: Callable[[], Any]) -> None:
        self._outcome = outcome
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True

    def __await__(self):
        return self._run().__await__()

    async def _run(self) -> Any:
        await asyncio.sleep(0.01)
        value = self._outcome()
        return await value if inspect.isawaitable(value) else value


class _Method:
    def __init__(self, answer: Callable[..., Any]) -> None:
        self.answer = answer
        self.calls: list[tuple[Any, ...]] = []

    def remote(self, *args: Any) -> _Response:
        self.calls.append(args)
        return _Response(lambda: self.answer(*args))


class FakeGeneration:
    """A generation deployment of one real local engine; ``generate`` can be scripted to fail first."""

    def __init__(self, engine) -> None:
        self.engine = engine
        self.failures: list[Exception | dict[str, Any]] = []  # raised or answered before the real work
        self.describe = _Method(self._describe)
        self.prompts = _Method(lambda name: (self.engine.model_info(name)["model_hash"], ["a red cube"]))
        self.generate = _Method(self._generate)
        self.snapshot = _Method(self._snapshot)
        self.load = _Method(self._load)
        self.hang_describe = False

    async def _load(self, name: str, path: str) -> dict[str, Any]:
        from server.errors import ServiceError

        try:
            info = await asyncio.wrap_future(self.engine.load_model(name, path))
        except ServiceError as err:
            fields = {"status": err.status, "code": err.code, "message": err.message, "field": err.field}
            return {"replica": "r1", "error": {**fields, "headers": err.headers}}
        return {"replica": "r1", "info": info, "prompts": self.engine.model_prompts(name)}

    async def _snapshot(self, name: str, path: str, allowed_priors: tuple[str, ...]) -> dict[str, Any]:
        future = self.engine.snapshot_model(name, Path(path), allowed_priors)
        return {"replica": "r1", "prior": await asyncio.wrap_future(future)}

    async def _describe(self) -> dict[str, Any]:
        if self.hang_describe:
            await asyncio.sleep(10)
        engine = self.engine
        return {
            "replica": "r1",
            "ready": engine.ready,
            "load_error": engine.load_error,
            "models": engine.models(),
            "default_model": engine.default_model,
            "saturated": False,
            "queue_depth": 0,
        }

    async def _generate(self, spec) -> dict[str, Any]:
        if self.failures:
            failure = self.failures.pop(0)
            if isinstance(failure, Exception):
                raise failure
            return {"replica": "r1", **failure}
        return {"replica": "r1", "result": await asyncio.wrap_future(self.engine.submit(spec))}


@pytest.fixture(scope="module")
def local_engine(tmp_path_factory):
    from server.engine import Engine

    engine = Engine(settings_for(tmp_path_factory.mktemp("local")), {"default": tiny_generator()})
    engine.start()
    assert engine.wait_ready(60), engine.load_error
    yield engine
    engine.stop()


@contextlib.contextmanager
def remote_client(tmp_path, local_engine, **engine_options) -> Iterator[tuple[Any, FakeGeneration, Any]]:
    from fastapi.testclient import TestClient

    from server.app import create_app
    from server.ray_serve.remote_engine import RemoteEngine
    from server.ray_serve.replica_header import ReplicaHeaderMiddleware

    handle = FakeGeneration(local_engine)
    engines = []

    def factory(settings, metrics):
        engine = RemoteEngine(
            settings, metrics, handle, ["default"], poll_s=0.05, retry_backoff_s=0.01, **engine_options
        )
        engines.append(engine)
        return engine

    with isolated_environment(tmp_path):
        app = create_app(settings_for(tmp_path), engine_factory=factory)
        app.add_middleware(ReplicaHeaderMiddleware)
        with TestClient(app) as client:
            for _ in range(200):
                if client.get("/readyz").status_code == 200:
                    break
                time.sleep(0.02)
            yield client, handle, engines[0]


def _generate(client, prompt: str, **extra):
    return client.post("/v1/generate", json={"prompt": prompt, "resolution": RES, **extra})


def test_answers_as_the_local_engine_with_x_replica(tmp_path, local_engine):
    with remote_client(tmp_path, local_engine) as (client, handle, _):
        ready = client.get("/readyz")
        assert ready.status_code == 200 and ready.json()["models"] == ["default"]
        assert client.get("/v1/models").json()["models"] == local_engine.models()
        assert client.get("/v1/models/default/prompts").json()["prompts"] == ["a red cube"]
        first = _generate(client, "a remote cube")
        assert first.status_code == 200, first.text
        assert first.headers["x-replica"] == "r1" and first.headers["x-cache"] == "miss"
        expected = local_engine.submit(handle.generate.calls[0][0]).result(30)
        assert first.content == expected.body
        assert first.headers["x-model-hash"] == expected.model_hash
        # Same key, hence ETag, as a local engine computes; a repeat is the ingress's cache hit.
        spec = handle.generate.calls[0][0]
        assert first.headers["etag"] == f'W/"{local_engine.key(spec)}"'
        again = _generate(client, "a remote cube")
        assert again.headers["x-cache"] == "hit" and "x-replica" not in again.headers
        assert len(handle.generate.calls) == 1
        unknown = _generate(client, "a cube", model="nope")
        assert unknown.status_code == 404 and unknown.json()["fields"][0]["field"] == "model"


def test_a_dead_replica_is_retried_then_answered_503(tmp_path, local_engine):
    from ray import exceptions as ray_exceptions

    died = ray_exceptions.ActorDiedError()
    with remote_client(tmp_path, local_engine, retries=2) as (client, handle, _):
        handle.failures = [died, ray_exceptions.ActorUnavailableError("gone", None)]
        retried = _generate(client, "a retried cube")
        assert retried.status_code == 200 and retried.headers["x-replica"] == "r1"
        assert len(handle.generate.calls) == 3
        handle.failures = [died, died, died]
        lost = _generate(client, "a lost cube")
        assert lost.status_code == 503 and lost.json()["error"] == "replica_unavailable"
        assert lost.headers["retry-after"] == "5"
        assert len(handle.generate.calls) == 6  # 1 + 2 retries, no more
        metrics = client.get("/metrics").text
        assert "att3d_replica_retries_total 4.0" in metrics


def test_refusals_keep_their_status_and_retry_after(tmp_path, local_engine):
    from ray.serve.exceptions import BackPressureError

    back_pressure = BackPressureError(num_queued_requests=3, max_queued_requests=3)
    queue_full = {
        "error": {
            "status": 429,
            "code": "queue_full",
            "message": "the generation queue is full; retry in about 7 s",
            "field": None,
            "headers": {"Retry-After": "7"},
        }
    }
    with remote_client(tmp_path, local_engine) as (client, handle, _):
        handle.failures = [back_pressure, queue_full]
        busy = _generate(client, "a busy cube")
        assert busy.status_code == 503 and busy.headers["retry-after"] == "2"
        assert busy.json()["error"] == "overloaded"
        assert "max_queued_requests" not in busy.json()["message"]
        full = _generate(client, "a full cube")
        assert full.status_code == 429 and full.headers["retry-after"] == "7"
        assert full.json() == {
            "error": "queue_full",
            "message": "the generation queue is full; retry in about 7 s",
            "fields": [],
        }
        assert len(handle.generate.calls) == 2  # refusals are not retried
        handle.failures = [RuntimeError("boom")]
        broken = _generate(client, "a broken cube")
        assert broken.status_code == 500 and broken.json()["error"] == "internal_error"


def test_identical_requests_in_flight_share_one_call(tmp_path, local_engine):
    from server.mesh_spec import MeshSpec

    with remote_client(tmp_path, local_engine) as (client, handle, engine):
        spec = MeshSpec("default", ("a shared cube",), ((1.0,),), False, RES, "vertex", "glb")

        async def twice():
            key = engine.key(spec)
            first, second = engine.submit(spec, key), engine.submit(spec, key)
            assert first is second and engine.queue_depth() == 1
            return await asyncio.wrap_future(first)

        result = client.portal.call(twice)
        assert result.body[:4] == b"glTF" and len(handle.generate.calls) == 1


def test_not_ready_without_an_answer(tmp_path, local_engine):
    with remote_client(tmp_path, local_engine, answer_timeout_s=0.2) as (client, handle, _):
        assert client.get("/readyz").status_code == 200
        handle.hang_describe = True
        for _ in range(100):
            ready = client.get("/readyz")
            if ready.status_code == 503:
                break
            time.sleep(0.02)
        assert ready.json()["reason"].startswith("no generation replica answered within 0.2 s")
        # The last known models still serve: a replica may answer the request though one poll failed.
        assert _generate(client, "a cube in the dark").status_code == 200


def test_a_refine_snapshots_the_model_on_a_replica(tmp_path, local_engine):
    """POST /v1/refine on the ingress: a replica saves the model into the shared data folder (once per
    weights) and the ingress's job manager takes the job."""
    with remote_client(tmp_path, local_engine) as (client, handle, engine):
        created = client.post("/v1/refine", json={"prompt": "a red cube", "steps": 2})
        assert created.status_code == 202, created.text
        ((name, path, priors),) = handle.snapshot.calls
        assert name == "default" and priors == tuple(engine.settings.job_priors)
        assert (Path(path) / "manifest.json").is_file()
        job = created.json()
        assert job["kind"] == "refine" and created.headers["location"] == f"/v1/jobs/{job['id']}"
        again = client.post("/v1/refine", json={"prompt": "a blue sphere", "steps": 2})
        assert again.status_code == 202 and len(handle.snapshot.calls) == 2  # the snapshot is reused
        unknown = client.post("/v1/refine", json={"prompt": "a red cube", "model": "nope"})
        assert unknown.status_code == 422 and unknown.json()["fields"][0]["field"] == "model"


def test_a_model_loaded_at_run_time_is_known_to_the_ingress_at_once(tmp_path, local_engine, tiny_checkpoint):
    """A replica loads the checkpoint; the ingress serves the model before any poll reports it, and a
    second load of the name is the replica's 409."""
    from server.errors import ServiceError

    with remote_client(tmp_path, local_engine) as (client, handle, engine):

        async def load(name: str):
            return await asyncio.wrap_future(engine.load_model(name, str(tiny_checkpoint)))

        info = client.portal.call(load, "runtime-tiny")
        assert info["name"] == "runtime-tiny" and handle.load.calls == [
            ("runtime-tiny", str(tiny_checkpoint))
        ]
        assert engine.model_info("runtime-tiny")["model_hash"] == info["model_hash"]
        assert engine.model_prompts("runtime-tiny") == ["a red cube", "a blue sphere"]
        assert "runtime-tiny" in {m["name"] for m in client.get("/v1/models").json()["models"]}
        assert _generate(client, "a runtime cube", model="runtime-tiny").status_code == 200
        with pytest.raises(ServiceError) as taken:
            client.portal.call(load, "runtime-tiny")
        assert taken.value.status == 409 and "already loaded" in taken.value.message
