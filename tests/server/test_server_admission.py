"""Admission by estimated completion time: refuse at once (429/503 + Retry-After) what cannot finish before
its deadline, stop admitted work that no longer can, learn the cost per resolution from measurements.

Timing is injected (a fake clock, fixed prior costs), never measured against this machine's speed."""

from __future__ import annotations

import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest
from server_fakes import isolated_environment, settings_for, started_client, tiny_generator
from test_server_engine import Gate

from server import mesh_spec
from server.admission import CostModel, QueueFull, TooSlow, admit, bucket, prior_seconds
from server.engine import Engine
from server.mesh_spec import MeshSpec

RES = 16


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def env(tmp_path):
    with isolated_environment(tmp_path):
        yield tmp_path


def _spec(prompt: str, resolution: int = RES, frames: int = 1) -> MeshSpec:
    if frames == 1:
        return MeshSpec("default", (prompt,), ((1.0,),), False, resolution, "vertex", "glb")
    walk = tuple((1.0 - i / (frames - 1), i / (frames - 1)) for i in range(frames))
    return MeshSpec("default", (prompt, prompt + " too"), walk, True, resolution, "vertex", "glb")


def _engine(env, generator, clock, prior, **overrides) -> Engine:
    settings = settings_for(env, warmup=False, deadline_margin=0.0, max_batch_size=1, **overrides)
    costs = CostModel(prior=prior, clock=clock)
    engine = Engine(settings, {"default": generator}, costs=costs, clock=clock)
    engine.start()
    assert engine.wait_ready(30)
    return engine


# ---- the estimate ---------------------------------------------------------------------------------


def test_cold_start_prior_admits_every_resolution_alone_within_the_default_timeout():
    for resolution in (16, 24, 64, 100, 256):
        assert 0 < prior_seconds(resolution, "vertex") < 120
    assert prior_seconds(128, "vertex") < prior_seconds(256, "vertex") < prior_seconds(256, "uv")
    assert [bucket(r) for r in (8, 16, 17, 32, 33, 256)] == [16, 16, 32, 32, 64, 256]


def test_cost_estimate_updates_from_measurements_and_forgets_stale_ones():
    clock = FakeClock()
    costs = CostModel(prior=lambda r, t: 1.0 * (r / 16) ** 3, alpha=0.5, stale_s=60, clock=clock)
    assert costs.per_mesh(32, "vertex") == 8.0  # the prior, cold
    assert costs.cost(3, 32, "vertex") == 24.0
    costs.record(32, "vertex", meshes=2, seconds=8.0)  # 4 s per mesh: the first measurement replaces
    assert costs.per_mesh(32, "vertex") == 4.0
    costs.record(32, "vertex", meshes=1, seconds=2.0)  # exponentially weighted: 0.5 * 4 + 0.5 * 2
    assert costs.per_mesh(32, "vertex") == 3.0
    assert costs.snapshot() == {"32/vertex": 3.0}
    # Within a bucket, by the prior's shape: 24³ costs (24/32)³ of the 32 bucket's measured 3 s.
    assert costs.per_mesh(24, "vertex") == pytest.approx(3.0 * (24 / 32) ** 3)
    # An unmeasured bucket: its prior times how fast measurements ran against their priors.
    assert costs.scale == pytest.approx(0.5 * (0.5 * 1.0 + 0.5 * 0.5) + 0.5 * 0.25)
    assert costs.per_mesh(64, "vertex") == pytest.approx(64.0 * costs.scale)
    # Measured under a CPU hog, then never again: after stale_s the bucket follows the other buckets.
    costs.record(64, "vertex", meshes=1, seconds=500.0)
    clock.now += 61
    for _ in range(20):
        costs.record(16, "vertex", meshes=1, seconds=0.5)  # the machine is fast again
    assert costs.per_mesh(64, "vertex") == pytest.approx(64.0 * 0.5, rel=0.01)


def test_admit_refuses_what_cannot_finish_with_an_honest_retry_after():
    admit(cost_s=10, ahead_s=80, budget_s=90)  # finishes exactly at the deadline
    with pytest.raises(QueueFull) as queued:
        admit(cost_s=10, ahead_s=100, budget_s=90)
    assert queued.value.status == 429 and queued.value.headers == {"Retry-After": "20"}
    with pytest.raises(TooSlow) as slow:
        admit(cost_s=150, ahead_s=0, budget_s=90)
    assert slow.value.status == 503 and slow.value.headers == {"Retry-After": "150"}
    assert "lower resolution" in slow.value.message


# ---- the engine -----------------------------------------------------------------------------------


def test_engine_admits_by_estimated_completion_and_admitted_requests_complete(env):
    clock = FakeClock()
    generator = tiny_generator()
    gate = Gate(generator)
    prior = lambda r, t: 10.0 if r <= RES else 150.0  # noqa: E731
    engine = _engine(env, generator, clock, prior, request_timeout_s=100.0, max_resolution=32)
    try:
        running = engine.submit(_spec("p0"))
        assert gate.entered.wait(10)
        # 10 s running + 10 s per queued request: the ninth queued one ends exactly at the 100 s deadline.
        queued = [engine.submit(_spec(f"p{i}")) for i in range(1, 10)]
        with pytest.raises(QueueFull) as full:
            engine.submit(_spec("p10"))
        assert full.value.retry_after_s == 10 and "would not finish" in full.value.message
        with pytest.raises(TooSlow) as slow:  # 150 s alone: never within 100 s
            engine.submit(_spec("big", resolution=32))
        assert slow.value.status == 503 and int(slow.value.headers["Retry-After"]) >= 1
        assert engine.saturated()  # 100 s of work ahead > 0.9 of the deadline: /readyz says not ready
        clock.now += 5  # the running request is estimated half done: room for one more half
        with pytest.raises(QueueFull) as full:
            engine.submit(_spec("p10"))
        assert full.value.retry_after_s == 5
        gate.release.set()
        for future in [running, *queued]:
            assert future.result(30).body[:4] == b"glTF"
        assert not engine.saturated()
        # Each finished request replaced the prior with its measured time (far below 10 s here).
        assert engine.costs.per_mesh(RES, "vertex") < 10.0
        assert set(engine.costs.snapshot()) == {"16/vertex"}
    finally:
        engine.stop()


def test_worker_skips_a_queued_request_that_can_no_longer_finish(env):
    clock = FakeClock()
    generator = tiny_generator()
    gate = Gate(generator)
    engine = _engine(env, generator, clock, lambda r, t: 1.0, request_timeout_s=10.0)
    try:
        held = engine.submit(_spec("held"))
        assert gate.entered.wait(10)
        late = engine.submit(_spec("abandoned"))
        # Past its deadline: its client has given up. (Not just short of it: "held" has replaced the 1 s
        # prior by its measured time, which includes however long the gate held it.)
        clock.now += 10.5
        gate.release.set()
        held.result(30)
        with pytest.raises(TooSlow, match="slower than estimated") as info:
            late.result(30)
        assert info.value.status == 503 and info.value.headers["Retry-After"]
        assert ("abandoned",) not in gate.calls
    finally:
        engine.stop()


def test_a_running_walk_stops_between_frames_once_it_cannot_finish(env):
    clock = FakeClock()
    generator = tiny_generator()
    gate = Gate(generator)
    engine = _engine(env, generator, clock, lambda r, t: 1.0, request_timeout_s=10.0)
    try:
        walk = engine.submit(_spec("a walk", frames=3))  # 3 s of work, 10 s deadline: admitted
        assert gate.entered.wait(10)
        clock.now += 8.5  # frame 1 ran long: 2 more frames (2 s) would end at 10.5 s
        gate.release.set()
        with pytest.raises(TooSlow):
            walk.result(30)
        assert len(gate.calls) == 1  # frames 2 and 3 were never started
        assert engine.costs.snapshot() == {}  # a stopped request is no measurement
    finally:
        engine.stop()


# ---- over HTTP --------------------------------------------------------------------------------------


def test_burst_against_a_tiny_deadline_answers_only_200_429_503(env, monkeypatch):
    # The 64 client threads share this process's GIL with the event loop and the worker, so the deadline
    # leaves seconds of slack for their scheduling (with a 1 s deadline, 2 of 200 once timed out in CI).
    work_s = 0.25

    def fake_body(generator, spec, before_mesh=None):
        for left in range(len(spec.walk), 0, -1):
            if before_mesh is not None:
                before_mesh(left)
            time.sleep(work_s)
        return b"glTF fake", "model/gltf-binary"

    monkeypatch.setattr(mesh_spec, "per_request_body", fake_body)
    settings = settings_for(
        env, warmup=False, request_timeout_s=5.0, deadline_margin=0.5, queue_size=256, max_batch_size=4
    )
    with started_client(settings, {"default": tiny_generator()}) as client, ThreadPoolExecutor(64) as pool:
        engine = client.app.state.engine
        engine.costs = CostModel(prior=lambda r, t: 2 * work_s)

        def post(i):
            return client.post("/v1/generate", json={"prompt": f"burst {i}", "resolution": RES})

        responses = list(pool.map(post, range(200)))
        statuses = Counter(r.status_code for r in responses)
        assert set(statuses) <= {200, 429, 503}, statuses
        assert statuses[200] >= 1 and statuses[429] >= 1, statuses
        for response in responses:
            if response.status_code != 200:
                assert int(response.headers["retry-after"]) >= 1
                assert response.json()["error"] in ("queue_full", "overloaded")
        # Costs were measured, and the refusals counted.
        assert engine.costs.snapshot()
        assert engine.metrics.registry.get_sample_value("att3d_queue_rejections_total") == statuses[429]
        # The worker drains: a later request is admitted.
        for _ in range(300):
            if engine.queue_depth() == 0:
                break
            threading.Event().wait(0.01)
        assert post("after").status_code == 200
