"""The model engine: micro-batching, batch invariance, coalescing, queue limits, timeouts, failures.

Admission by estimated completion time and deadline checks: test_server_admission.py."""

from __future__ import annotations

import dataclasses
import threading
import zipfile
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from server_fakes import (
    assert_valid_glb,
    isolated_environment,
    settings_for,
    started_client,
    tiny_config,
    tiny_generator,
)

from att3d.generate import Generator
from att3d.meshing.export import mesh_to_bytes
from server.admission import CostModel
from server.engine import Engine
from server.mesh_spec import MeshSpec
from server.work_queue import QueueFull

RES = 16
PROMPTS = ["a red cube", "a blue sphere", "a green cone", "a yellow torus"]


@pytest.fixture
def env(tmp_path):
    with isolated_environment(tmp_path):
        yield tmp_path


def _spec(prompt: str, resolution: int = RES) -> MeshSpec:
    return MeshSpec("default", (prompt,), ((1.0,),), False, resolution, "vertex", "glb")


class Gate:
    """Wraps ``Generator.blend`` so tests can hold the worker inside a request and count calls."""

    def __init__(self, generator: Generator, fail: dict[str, BaseException] | None = None) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        self.calls: list[tuple[str, ...]] = []
        self.fail = fail or {}
        self._blend = generator.blend
        generator.blend = self  # type: ignore[method-assign]

    def __call__(self, prompts, weights):
        self.calls.append(tuple(prompts))
        self.entered.set()
        assert self.release.wait(30), "test never released the gate"
        for prompt in prompts:
            if prompt in self.fail:
                raise self.fail[prompt]
        return self._blend(prompts, weights)


def _engine(env, generator, **overrides) -> Engine:
    engine = Engine(settings_for(env, warmup=False, **overrides), {"default": generator})
    engine.start()
    assert engine.wait_ready(30)
    return engine


def test_batched_results_equal_unbatched_and_direct(env):
    generator = tiny_generator()
    gate = Gate(generator)
    batched = _engine(env, generator, max_batch_size=8, max_wait_ms=50)
    try:
        # Hold the worker in a first request so the next four queue up and form one batch.
        first = batched.submit(_spec("warm"))
        assert gate.entered.wait(10)
        futures = [batched.submit(_spec(p)) for p in PROMPTS]
        assert batched.queue_depth() == 4
        gate.release.set()
        together = [f.result(30).body for f in futures]
        first.result(30)
        # One batch of 1 (the held request), then one batch of all 4.
        sample = batched.metrics.registry.get_sample_value
        assert sample("att3d_batch_size_sum") == 5.0
        assert sample("att3d_batch_size_count") == 2.0
    finally:
        batched.stop()

    alone = _engine(env, tiny_generator(), max_batch_size=1)
    try:
        one_by_one = [alone.submit(_spec(p)).result(30).body for p in PROMPTS]
    finally:
        alone.stop()
    config = dataclasses.replace(tiny_config().mesh, resolution=RES)
    direct = [mesh_to_bytes(tiny_generator().generate(p, config), "glb") for p in PROMPTS]
    assert together == one_by_one == direct
    assert len(set(together)) == len(PROMPTS)  # the prompts really give different meshes
    for body in together:
        assert_valid_glb(body)


def test_identical_requests_share_one_computation(env):
    generator = tiny_generator()
    gate = Gate(generator)
    engine = _engine(env, generator)
    try:
        held = engine.submit(_spec("hold"))
        assert gate.entered.wait(10)
        a = engine.submit(_spec("a red cube"))
        b = engine.submit(_spec("a red cube"))
        assert a is b and engine.queue_depth() == 1
        gate.release.set()
        held.result(30)
        assert a.result(30).body
        assert gate.calls.count(("a red cube",)) == 1
        # Finished results come from the cache.
        assert engine.lookup(engine.key(_spec("a red cube"))) is not None
    finally:
        engine.stop()


def test_queue_full_raises_with_retry_after(env):
    generator = tiny_generator()
    gate = Gate(generator)
    engine = _engine(env, generator, queue_size=2, max_batch_size=1)
    try:
        running = engine.submit(_spec("p0"))
        assert gate.entered.wait(10)
        queued = [engine.submit(_spec(f"p{i}")) for i in (1, 2)]
        with pytest.raises(QueueFull) as info:
            engine.submit(_spec("p3"))
        assert info.value.retry_after_s >= 1
        assert engine.metrics.registry.get_sample_value("att3d_queue_rejections_total") == 1.0
        gate.release.set()
        for future in [running, *queued]:
            assert future.result(30).body[:4] == b"glTF"
    finally:
        engine.stop()


def test_http_429_with_retry_after_and_recovery(env):
    generator = tiny_generator()
    gate = Gate(generator)
    settings = settings_for(env, queue_size=2, max_batch_size=1, warmup=False, readiness_queue_fraction=0.5)
    with started_client(settings, {"default": generator}) as client, ThreadPoolExecutor(4) as pool:

        def post(prompt):
            return client.post("/v1/generate", json={"prompt": prompt, "resolution": RES})

        first = pool.submit(post, "q0")
        assert gate.entered.wait(10)
        waiting = [pool.submit(post, f"q{i}") for i in (1, 2)]
        engine = client.app.state.engine
        for _ in range(200):
            if engine.queue_depth() == 2:
                break
            threading.Event().wait(0.01)
        assert client.get("/readyz").status_code == 503  # saturated queue: not ready for more
        refused = post("q3")
        assert refused.status_code == 429
        assert int(refused.headers["retry-after"]) >= 1
        assert refused.json()["error"] == "queue_full"
        gate.release.set()
        for future in [first, *waiting]:
            response = future.result(30)
            assert response.status_code == 200
            assert_valid_glb(response.content)
        assert post("q3").status_code == 200
        assert client.get("/readyz").status_code == 200
        assert "att3d_queue_rejections_total 1.0" in client.get("/metrics").text


def test_oom_and_errors_fail_only_their_request(env):
    generator = tiny_generator()
    gate = Gate(
        generator,
        fail={
            "oom": torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB"),
            "bug": KeyError("x"),
        },
    )
    gate.release.set()
    settings = settings_for(env, max_batch_size=8, max_wait_ms=100, warmup=False)
    with started_client(settings, {"default": generator}) as client, ThreadPoolExecutor(3) as pool:
        # The three requests arrive within one batching window: one batch, three outcomes.
        futures = {
            p: pool.submit(client.post, "/v1/generate", json={"prompt": p, "resolution": RES})
            for p in ("oom", "fine", "bug")
        }
        oom, fine, bug = (futures[p].result(30) for p in ("oom", "fine", "bug"))
        assert oom.status_code == 503 and oom.json()["error"] == "out_of_memory"
        assert "lower resolution" in oom.json()["message"] and oom.headers["retry-after"]
        assert fine.status_code == 200
        assert bug.status_code == 500 and bug.json()["error"] == "internal_error"
        # The worker survived both failures.
        after = client.post("/v1/generate", json={"prompt": "after", "resolution": RES})
        assert after.status_code == 200
        assert_valid_glb(after.content)
        assert 'att3d_generation_seconds_count{outcome="out_of_memory"} 1.0' in client.get("/metrics").text


def test_no_surface_is_422(env):
    empty = dataclasses.replace(
        tiny_config(),
        field=dataclasses.replace(tiny_config().field, blob_density=0.0, density_bias=-30.0),
    )
    generator = Generator.seeded(empty)
    settings = settings_for(env, warmup=True)
    with started_client(settings, {"default": generator}) as client:
        response = client.post("/v1/generate", json={"prompt": "nothing", "resolution": RES})
        assert response.status_code == 422
        assert response.json()["error"] == "no_surface"
        assert response.json()["fields"][0]["field"] == "prompt"


def test_timeout_is_504_and_the_late_result_is_cached(env):
    generator = tiny_generator()
    gate = Gate(generator)
    settings = settings_for(env, request_timeout_s=0.5, warmup=False)
    with started_client(settings, {"default": generator}) as client:
        # Estimated free, so that it is admitted and started however busy this machine is; the gate then
        # holds it far past its estimate: the one case that still ends in 504.
        client.app.state.engine.costs = CostModel(prior=lambda resolution, texture: 0.0)
        slow = client.post("/v1/generate", json={"prompt": "slow", "resolution": RES})
        assert slow.status_code == 504 and slow.json()["error"] == "timeout"
        engine = client.app.state.engine
        key = engine.key(_spec("slow"))
        gate.release.set()
        for _ in range(300):
            if engine.cache.get(key) is not None:
                break
            threading.Event().wait(0.02)
        again = client.post("/v1/generate", json={"prompt": "slow", "resolution": RES})
        assert again.status_code == 200 and again.headers["x-cache"] == "hit"


# ---- mesher="batched": one CoarseToFineMesher pass per micro-batch -----------------------------------


class MesherCalls:
    """Records the batch size of every ``CoarseToFineMesher.meshes`` call; optionally fails some of them."""

    def __init__(self, monkeypatch, fail=None) -> None:
        from att3d.meshing.coarse_to_fine import CoarseToFineMesher

        self.sizes: list[int] = []
        original = CoarseToFineMesher.meshes
        calls = self

        def meshes(mesher, embeddings, return_exceptions=False):
            calls.sizes.append(len(embeddings))
            if fail is not None:
                fail(embeddings)
            return original(mesher, embeddings, return_exceptions)

        monkeypatch.setattr(CoarseToFineMesher, "meshes", meshes)


def test_batched_mesher_meshes_a_batch_in_one_pass(env, monkeypatch):
    import io

    import numpy as np
    import trimesh

    calls = MesherCalls(monkeypatch)
    generator = tiny_generator()
    gate = Gate(generator)
    engine = _engine(env, generator, mesher="batched", max_batch_size=8, max_wait_ms=50)
    try:
        held = engine.submit(_spec("warm"))
        assert gate.entered.wait(10)
        futures = [engine.submit(_spec(p)) for p in PROMPTS]
        gate.release.set()
        together = [f.result(60).body for f in futures]
        held.result(60)
    finally:
        engine.stop()
    assert calls.sizes == [1, 4]  # the held request alone, then the four in one pass

    alone = _engine(env, tiny_generator(), mesher="batched", max_batch_size=1)
    try:
        one_by_one = [alone.submit(_spec(p)).result(60).body for p in PROMPTS]
        # A walk's frames go through the batched mesher together too.
        walk = MeshSpec(
            "default", tuple(PROMPTS[:2]), ((1.0, 0.0), (0.5, 0.5), (0.0, 1.0)), True, RES, "vertex", "glb"
        )
        frames = alone.submit(walk).result(60)
    finally:
        alone.stop()
    assert calls.sizes[-1] == 3 and frames.media_type == "application/zip"
    with zipfile.ZipFile(io.BytesIO(frames.body)) as archive:
        assert_valid_glb(archive.read("frame_001.glb"))
    for a, b in zip(together, one_by_one, strict=True):
        assert_valid_glb(a)
        mesh_a = trimesh.load(io.BytesIO(a), file_type="glb", force="mesh")
        mesh_b = trimesh.load(io.BytesIO(b), file_type="glb", force="mesh")
        # Same surface; only float rounding of the batched products may differ.
        assert mesh_a.faces.shape == mesh_b.faces.shape
        np.testing.assert_allclose(mesh_a.vertices, mesh_b.vertices, atol=1e-4)


def test_batched_mesher_failure_fails_only_its_request(env, monkeypatch):
    generator = tiny_generator()
    bad = generator.embed(["oom"])[0]

    def fail(embeddings):
        if len(embeddings) > 1 or torch.equal(embeddings[0].cpu(), bad.cpu()):
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 8 GiB")

    calls = MesherCalls(monkeypatch, fail)
    gate = Gate(generator)
    settings = settings_for(env, mesher="batched", max_batch_size=8, max_wait_ms=100, warmup=False)
    with started_client(settings, {"default": generator}) as client, ThreadPoolExecutor(4) as pool:
        post = client.post
        held = pool.submit(post, "/v1/generate", json={"prompt": "hold", "resolution": RES})
        assert gate.entered.wait(10)
        futures = {
            p: pool.submit(post, "/v1/generate", json={"prompt": p, "resolution": RES})
            for p in ("oom", "fine one", "fine two")
        }
        engine = client.app.state.engine
        for _ in range(300):
            if engine.queue_depth() == 3:
                break
            threading.Event().wait(0.01)
        gate.release.set()
        assert held.result(60).status_code == 200
        status = {p: f.result(60).status_code for p, f in futures.items()}
        assert status == {"oom": 503, "fine one": 200, "fine two": 200}
        # The group of three failed as a whole, then each was meshed alone.
        assert calls.sizes[-4:] == [3, 1, 1, 1]
