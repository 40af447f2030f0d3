"""The Ray Serve backend on a local Ray cluster (one per module): two generation replicas serving the tiny
generator through Serve's HTTP proxy on 127.0.0.1, compared with the local app; a replica killed mid-load;
the shared Redis cache across replicas; overload answered 429/503 with ``Retry-After``."""

from __future__ import annotations

import asyncio
import os
import re
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from redis_server import redis_server  # noqa: F401  (a fixture)
from server_fakes import TESTS_DIR, job_request, settings_for, started_client, tiny_generator

pytestmark = pytest.mark.ray  # Ray is imported inside the tests: the plain run collects this module

APP = "att3d"
RES = 16
FACTORY = "server_fakes:tiny_generator"  # the replicas build the same seeded generator as tiny_generator()


@dataclass
class Cluster:
    url: str
    tmp: Path


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A local Ray cluster whose workers import ``tests/`` (the fake model) and keep caches in tmp."""
    import ray
    from ray import serve

    tmp = tmp_path_factory.mktemp("ray_serve")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RAY_USAGE_STATS_ENABLED", "0")
        patch.setenv("ATT3D_CACHE", str(tmp / "cache"))
        path = os.environ.get("PYTHONPATH", "")
        patch.setenv("PYTHONPATH", f"{TESTS_DIR}{os.pathsep}{path}" if path else str(TESTS_DIR))
        # Logical CPUs: an ingress and two replicas, plus room for Serve's rolling replacements.
        ray.init(address="local", num_cpus=8, include_dashboard=False, log_to_driver=False)
        port = _free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        try:
            yield Cluster(f"http://127.0.0.1:{port}", tmp)
        finally:
            serve.shutdown()
            ray.shutdown()


def deploy(cluster: Cluster, replicas: int, settings: dict | None = None, **options) -> None:
    """Deploy (or update) the application and wait until ``/readyz`` answers 200."""
    from ray import serve

    from server.ray_serve.deployments import bind
    from server.ray_serve.options import RayServeOptions

    app_settings = settings_for(cluster.tmp, **(settings or {}))
    app = bind(RayServeOptions(factory=FACTORY, replicas=replicas, **options), app_settings)
    serve.run(app, name=APP, route_prefix="/")
    deadline = time.monotonic() + 60
    while httpx.get(f"{cluster.url}/readyz").status_code != 200:
        assert time.monotonic() < deadline, "the application never became ready"
        time.sleep(0.2)


@pytest.fixture(scope="module")
def service(cluster):
    deploy(cluster, replicas=2)
    return cluster.url


def _generate(url: str, prompt: str, resolution: int = RES, **extra) -> httpx.Response:
    body = {"prompt": prompt, "resolution": resolution, **extra}
    return httpx.post(f"{url}/v1/generate", json=body, timeout=120)


async def _burst(url: str, prompts: list[str], resolution: int) -> list[httpx.Response]:
    async with httpx.AsyncClient(timeout=120, limits=httpx.Limits(max_connections=len(prompts))) as client:
        requests = [
            client.post(f"{url}/v1/generate", json={"prompt": p, "resolution": resolution}) for p in prompts
        ]
        return list(await asyncio.gather(*requests))


def _replica_states() -> dict[str, int]:
    from ray import serve

    from server.ray_serve.options import GENERATION

    return dict(serve.status().applications[APP].deployments[GENERATION].replica_states)


def test_two_replicas_both_answer(service):
    responses = asyncio.run(_burst(service, [f"a cube number {i}" for i in range(16)], RES))
    assert [r.status_code for r in responses] == [200] * 16
    assert len({r.headers["x-replica"] for r in responses}) == 2
    assert _replica_states() == {"RUNNING": 2}


def test_same_answers_as_the_local_app(service, tmp_path):
    """Status, body and headers as ``att3d serve`` answers them (the same seeded model: same bytes)."""
    cases = [
        ("POST", "/v1/generate", {"prompt": "a red cube", "resolution": RES}),
        ("POST", "/v1/interpolate", {"prompts": ["a red cube", "a blue sphere"], "weights": [0.5, 0.5]}),
        ("POST", "/v1/generate", {"prompt": "a red cube", "resolution": 64}),
        ("POST", "/v1/generate", {"prompt": "   "}),
        ("POST", "/v1/generate", {"prompt": "a red cube", "model": "nope"}),
        ("GET", "/v1/models", None),
        ("GET", "/v1/models/default", None),
        ("GET", "/v1/models/nope", None),
        ("GET", "/v1/models/default/prompts", None),
        ("GET", "/v1/jobs/nope", None),
        ("DELETE", "/v1/models", None),
        ("GET", "/readyz", None),
    ]
    compared = ("content-type", "etag", "x-model-hash", "x-model-name", "x-prompt-familiarity", "allow")
    with started_client(settings_for(tmp_path), {"default": tiny_generator()}) as local:
        for method, path, body in cases:
            expected = local.request(method, path, json=body)
            answer = httpx.request(method, f"{service}{path}", json=body, timeout=120)
            assert answer.status_code == expected.status_code, (path, body, answer.text)
            assert answer.content == expected.content, (path, body)
            for header in compared:
                assert answer.headers.get(header) == expected.headers.get(header), (path, header)
            if path.startswith("/v1/generate") and answer.status_code == 200:
                assert answer.headers["x-replica"]
    too_big = _generate(service, "a red cube", 64).json()
    assert too_big["fields"] == [
        {"field": "resolution", "message": "must be from 16 to 32 on this server, got 64"}
    ]


def test_etag_304_and_cache_hit(service):
    first = _generate(service, "a blue sphere")
    again = _generate(service, "  a blue sphere ")
    assert again.headers["x-cache"] == "hit" and again.content == first.content
    assert "x-replica" not in again.headers  # answered by the ingress's cache, no replica involved
    revalidated = httpx.post(
        f"{service}/v1/generate",
        json={"prompt": "a blue sphere", "resolution": RES},
        headers={"If-None-Match": first.headers["etag"]},
    )
    assert revalidated.status_code == 304 and revalidated.content == b""
    assert revalidated.headers["etag"] == first.headers["etag"]


def test_jobs_run_on_the_ingress_and_their_models_load_on_every_replica(service):
    """The ingress owns the job manager (training and refine jobs); a finished job's model loads at run
    time and every replica serves it."""
    job = httpx.post(f"{service}/v1/jobs", json=job_request(steps=4)).json()
    deadline = time.monotonic() + 90
    while (status := httpx.get(f"{service}/v1/jobs/{job['id']}").json())["state"] != "succeeded":
        assert status["state"] in ("queued", "running") and time.monotonic() < deadline, status
        time.sleep(0.2)
    # Loaded at run time: one replica loads it, the other from the saved list when first asked for it.
    load = httpx.post(f"{service}/v1/models", json={"job_id": job["id"], "name": "trained"})
    assert load.status_code == 201, load.text
    assert "trained" in {m["name"] for m in httpx.get(f"{service}/v1/models").json()["models"]}
    replicas = set()
    for i in range(12):
        answer = httpx.post(
            f"{service}/v1/generate",
            json={"prompt": f"a trained cube {i}", "model": "trained", "resolution": RES},
        )
        assert answer.status_code == 200, answer.text
        replicas.add(answer.headers["x-replica"])
    assert len(replicas) == 2, replicas  # both replicas served the new model
    again = httpx.post(f"{service}/v1/models", json={"job_id": job["id"], "name": "trained"})
    assert again.status_code == 409 and again.json()["fields"][0]["field"] == "name"
    # A refine job: a replica saves the model's snapshot, the ingress's job manager runs it to its mesh.
    refine = httpx.post(f"{service}/v1/refine", json={"prompt": "a red cube", "steps": 4})
    assert refine.status_code == 202, refine.text
    deadline = time.monotonic() + 90
    while (status := httpx.get(refine.headers["location"].join([service, ""])).json())[
        "state"
    ] != "succeeded":
        assert status["state"] in ("queued", "running") and time.monotonic() < deadline, status
        time.sleep(0.2)
    result = httpx.get(f"{service}/v1/jobs/{status['id']}/result")
    assert result.status_code == 200 and result.content[:4] == b"glTF"


def test_killing_a_replica_mid_load(service):
    """Requests on the killed replica are tried again on the other: every request answers 200, and Serve
    starts a replacement (two replicas RUNNING again, answering). Eight clients keep requests in flight on
    both replicas (Serve routes each to the less loaded of two), so the kill interrupts some."""
    import ray

    prompts = [f"a sphere under fire {i}" for i in range(40)]
    answers: list[httpx.Response] = []
    lock = threading.Lock()

    def client(mine: list[str]) -> None:
        for prompt in mine:
            response = _generate(service, prompt)
            with lock:
                answers.append(response)

    clients = [threading.Thread(target=client, args=(prompts[i::8],)) for i in range(8)]
    for thread in clients:
        thread.start()
    while len(answers) < 8:
        time.sleep(0.01)
    victim = answers[-1].headers["x-replica"]
    actors = ray.util.list_named_actors(all_namespaces=True)
    (name,) = [actor["name"] for actor in actors if actor["name"].endswith(f"#{victim}")]
    ray.kill(ray.get_actor(name, namespace="serve"), no_restart=True)
    for thread in clients:
        thread.join(180)
    assert sorted(r.status_code for r in answers) == [200] * len(prompts), [
        (r.status_code, r.text) for r in answers if r.status_code != 200
    ]
    metrics = httpx.get(f"{service}/metrics").text
    retries = float(re.search(r"^att3d_replica_retries_total (\S+)$", metrics, re.M).group(1))
    assert retries >= 1
    # Back: two replicas RUNNING, and both answering (the ingress learns of the new one shortly after).
    deadline, rounds = time.monotonic() + 120, 0
    while True:
        rounds += 1
        prompts = [f"a sphere after the fire {rounds}.{i}" for i in range(8)]
        replicas = {r.headers["x-replica"] for r in asyncio.run(_burst(service, prompts, RES))}
        if _replica_states() == {"RUNNING": 2} and len(replicas) == 2:
            break
        assert time.monotonic() < deadline, (_replica_states(), replicas)
        time.sleep(0.5)
    assert victim not in replicas


def test_shared_redis_cache_across_replicas(cluster, redis_server):  # noqa: F811
    """With ``ATT3D_CACHE_URL`` the replicas and the ingress share one cache: a mesh one replica computed is
    the other replica's cache hit (the same result, its original generation time) and the ingress's."""
    from ray import serve

    from server.mesh_spec import MeshSpec
    from server.ray_serve.options import GENERATION

    deploy(cluster, replicas=2, settings={"cache_url": redis_server.url})
    handle = serve.get_deployment_handle(GENERATION, app_name=APP)
    spec = MeshSpec("default", ("a shared torus",), ((1.0,),), False, RES, "vertex", "glb")
    answers: dict[str, object] = {}
    deadline = time.monotonic() + 60
    while len(answers) < 2:  # Serve picks the replica: ask until both have answered
        answer = handle.generate.remote(spec).result()
        answers.setdefault(answer["replica"], answer["result"])
        assert time.monotonic() < deadline, answers.keys()
    first, second = answers.values()
    assert first.body == second.body and first.generation_ms == second.generation_ms  # computed once
    assert redis_server.client.keys("att3d:*")
    response = _generate(cluster.url, "a shared torus")
    assert response.headers["x-cache"] == "hit" and response.content == first.body
    assert float(response.headers["x-generation-ms"]) == pytest.approx(first.generation_ms, abs=0.05)


def _by_status(responses: list[httpx.Response]) -> dict[int, list[httpx.Response]]:
    by_status: dict[int, list[httpx.Response]] = {}
    for response in responses:
        by_status.setdefault(response.status_code, []).append(response)
    return by_status


def test_back_pressure_answers_503_with_retry_after(cluster):
    """One replica taking one request at a time, one more waiting at the ingress: Serve refuses the rest of
    a burst, answered 503 ``overloaded`` with ``Retry-After`` (never a 500)."""
    deploy(cluster, replicas=1, max_ongoing_requests=1, max_queued_requests=1)
    by_status = _by_status(asyncio.run(_burst(cluster.url, [f"a crowded cube {i}" for i in range(12)], 32)))
    assert set(by_status) == {200, 503}, {s: r[0].text for s, r in by_status.items()}
    for response in by_status[503]:
        body = response.json()
        assert body["error"] == "overloaded"
        assert body["message"].startswith("every generation replica is busy")
        assert int(response.headers["retry-after"]) >= 1


def test_replica_refusals_reach_the_client_with_retry_after(cluster):
    """The replica's own admission (``queue_size`` 1, one request per batch) refuses past its queue: 429
    ``queue_full`` with the engine's ``Retry-After``, as ``att3d serve`` answers it."""
    engine = {"queue_size": 1, "max_batch_size": 1, "max_wait_ms": 0.0}
    deploy(cluster, replicas=1, settings=engine, max_ongoing_requests=16, max_queued_requests=64)
    by_status = _by_status(asyncio.run(_burst(cluster.url, [f"a queued cube {i}" for i in range(12)], 32)))
    assert set(by_status) == {200, 429}, {s: r[0].text for s, r in by_status.items()}
    for response in by_status[429]:
        assert response.json()["error"] == "queue_full" and int(response.headers["retry-after"]) >= 1
